"""The admin pages' languages: one JSON catalogue per language in orpoll/locale/, the choice of
language for a request (the ``lang`` query argument, then the cookie, then Accept-Language),
and the ``t()`` the templates use."""

from __future__ import annotations

import functools
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from markupsafe import Markup, escape

LOCALE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locale")
DEFAULT = "en"
COOKIE = "orpoll_lang"
# Code of each language (its catalogue's file name) -> (<html lang>, the switch's label).
LANGUAGES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"en": ("en", "EN"), "zh": ("zh-CN", "中文")}
)


@functools.cache
def catalogue(lang: str) -> Mapping[str, str]:
    """The strings of ``lang`` by key, read once per process (the files ship with the code)."""
    with open(os.path.join(LOCALE_DIR, lang + ".json"), encoding="utf-8") as f:
        return MappingProxyType(json.load(f))


def accepted(header: str | None) -> list[str]:
    """The primary language subtags of an Accept-Language header, most wanted first
    (``"zh-CN,zh;q=0.9,en;q=0.8"`` -> ``["zh", "zh", "en"]``); q=0 entries are left out."""
    ranked = []
    for position, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        if tag and q > 0:
            ranked.append((-q, position, tag.split("-")[0].strip().lower()))
    return [lang for _, _, lang in sorted(ranked)]


def negotiate(chosen: str | None, accept_language: str | None) -> str:
    """The language to answer in: ``chosen`` (the query argument or the cookie) when it names
    a catalogue, else the first Accept-Language entry that does, else English."""
    if chosen is not None and chosen in LANGUAGES:
        return chosen
    return next((lang for lang in accepted(accept_language) if lang in LANGUAGES), DEFAULT)


def translate(lang: str, key: str, default: str | None = None, **params: Any) -> str:
    """The catalogue text of ``key`` with ``{name}`` placeholders filled; English when the
    language lacks the key; ``default`` (else the key) when no catalogue has it."""
    text = catalogue(lang).get(key) or catalogue(DEFAULT).get(key)
    if text is None:
        return key if default is None else default
    return text.format_map(params) if params else text


def translator(lang: str) -> Callable[..., Markup]:
    """``t(key, **params)`` for templates: the text escaped, parameters escaped unless they are
    already markup (a ``<code>`` element built in the template)."""

    def t(key: str, **params: Any) -> Markup:
        text = catalogue(lang).get(key) or catalogue(DEFAULT).get(key, key)
        return escape(text).format(**params) if params else escape(text)

    return t


def switch_links(path: str, query: str) -> list[dict[str, str]]:
    """The language switch: for each language, the current URL with ``lang`` set to it (other
    query arguments, such as the login page's ``next``, are kept)."""
    args = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k != "lang"]
    links = []
    for code, (_, label) in LANGUAGES.items():
        href = path + "?" + urllib.parse.urlencode([*args, ("lang", code)])
        links.append({"code": code, "label": label, "href": href})
    return links


def template_namespace(lang: str, path: str, query: str) -> dict[str, Any]:
    """What every admin template gets for its language: ``t``, ``lang``, ``html_lang``, the
    catalogue (embedded for the scripts) and the switch's links."""
    return {
        "t": translator(lang),
        "lang": lang,
        "html_lang": LANGUAGES[lang][0],
        "catalogue": dict(catalogue(lang)),
        "languages": switch_links(path, query),
    }
