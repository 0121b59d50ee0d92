# orpoll: slim image, non-root (uid and gid 10001), state in /data.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data HOST=0.0.0.0 PORT=8000
WORKDIR /app
# pycurl, uvloop, orjson and cryptography ship manylinux wheels, so no compiler is needed.
COPY requirements.txt .
# A fixed uid and gid, so a bind-mounted host directory can be given to them (chown 10001:10001).
RUN pip install --no-cache-dir -r requirements.txt \
    && groupadd --system --gid 10001 orpoll \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home orpoll \
    && mkdir -p /data && chown orpoll:orpoll /data && chmod 0700 /data
COPY orpoll ./orpoll
COPY templates ./templates
COPY static ./static
COPY run.py .

USER orpoll
# A new named volume starts as a copy of /data above (owned by orpoll); a bind mount keeps
# the host directory's owner, which must be uid 10001 (or run with --user).
VOLUME ["/data"]
EXPOSE 8000
# SIGTERM drains: requests and streams in flight get SHUTDOWN_GRACE_SECONDS to finish, so give
# `docker stop -t` (compose: stop_grace_period) a few seconds more than that.
STOPSIGNAL SIGTERM
# /healthz is liveness: 200 while the process serves (its body may say degraded or draining).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"
CMD ["python", "run.py"]
