# orpoll: slim image, non-root, state in /data.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data PORT=8000
WORKDIR /app
# pycurl, uvloop, orjson and cryptography ship manylinux wheels, so no compiler is needed.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --system --uid 10001 --home-dir /app orpoll \
    && mkdir -p /data && chown orpoll /data
COPY orpoll ./orpoll
COPY templates ./templates
COPY static ./static
COPY run.py .

USER orpoll
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"
CMD ["python", "run.py"]
