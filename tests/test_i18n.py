"""The admin's catalogues, read without a server: both languages hold the same keys (using no
placeholder English lacks), every key a template, script or admin handler uses is in them, no
template or script has visible text of its own, and the language negotiation."""

from __future__ import annotations

import dataclasses
import glob
import html.parser
import json
import os
import re

import pytest

from orpoll import i18n
from orpoll.config import Settings
from orpoll.handlers.admin import LOGIN_MESSAGES
from orpoll.handlers.admin_settings import effective
from orpoll.keyview import STATUSES
from tests.admin_helpers import ROOT

# Plural forms: English has "one" and "other"; Chinese only "other" (Intl.PluralRules).
PLURAL = re.compile(r"\.(zero|one|two|few|many|other)$")
# Help texts of settings: English comes from the settings' own declaration (config.py).
ONLY_TRANSLATED = "setting_help."
TEMPLATES = sorted(glob.glob(os.path.join(ROOT, "templates", "*.html")))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "static", "*.js")))


def load(lang: str) -> dict[str, str]:
    with open(os.path.join(i18n.LOCALE_DIR, lang + ".json"), encoding="utf-8") as f:
        return json.load(f)


def base_keys(cat: dict[str, str]) -> set[str]:
    """Keys with the plural form dropped; setting help left out (English has none)."""
    return {PLURAL.sub("", k) for k in cat if not k.startswith(ONLY_TRANSLATED)}


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


def test_every_language_has_a_catalogue_of_strings():
    assert i18n.DEFAULT in i18n.LANGUAGES
    for lang in i18n.LANGUAGES:
        cat = load(lang)
        assert cat and all(isinstance(v, str) and v.strip() for v in cat.values()), lang
        assert dict(i18n.catalogue(lang)) == cat


def test_catalogues_hold_the_same_keys_and_placeholders():
    en = load("en")
    for lang in i18n.LANGUAGES:
        cat = load(lang)
        assert base_keys(cat) == base_keys(en), lang
        for key, text in cat.items():
            if PLURAL.search(key) and not key.endswith(".other"):
                continue
            if key in en:  # a translation may leave the server's detail out, never add one
                assert placeholders(text) <= placeholders(en[key]), (lang, key)
        plural_groups = {PLURAL.sub("", k) for k in cat if PLURAL.search(k)}
        assert all(group + ".other" in cat for group in plural_groups), lang


def test_every_editable_setting_has_its_help_translated():
    editable = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["editable"]}
    for lang in i18n.LANGUAGES:
        if lang == i18n.DEFAULT:
            continue
        helps = {
            k.removeprefix(ONLY_TRANSLATED) for k in load(lang) if k.startswith(ONLY_TRANSLATED)
        }
        assert helps == editable, lang


def used_keys() -> set[str]:
    """Every catalogue key named literally in a template, a script or the admin handlers;
    a plural key (``tn("x", n)``) as ``x.other``."""
    keys: set[str] = set()
    for path in TEMPLATES:
        keys |= set(re.findall(r"""\bt\(\s*["']([^"']+)["']""", read(path)))
    groups = {k.split(".")[0] for k in load("en")}
    for path in SCRIPTS:
        text = read(path)
        keys |= set(re.findall(r'\bt\(\s*"([^"]+)"', text))
        keys |= {k + ".other" for k in re.findall(r'\btn\(\s*"([^"]+)"', text)}
        # Keys kept in a table ({enable: "toast.enable"}) are named as plain strings.
        literal = re.findall(r'(?<!tn\()"([a-z_]+)\.([a-z0-9_]+)"', text)
        keys |= {f"{g}.{n}" for g, n in literal if g in groups}
    keys |= set(LOGIN_MESSAGES.values())
    keys |= {note for _, _, note in effective(Settings()) if note}
    keys |= {"settings.secret_set", "settings.secret_unset", "settings.empty"}
    keys |= {f"status.{s}" for s in STATUSES}
    for path in glob.glob(os.path.join(ROOT, "orpoll", "handlers", "admin*.py")) + [
        os.path.join(ROOT, "orpoll", "keyview.py")
    ]:
        keys |= {f"error.{code}" for code in re.findall(r'code="(\w+)"', read(path))}
    return keys


def test_every_key_in_use_is_in_every_catalogue():
    keys = used_keys()
    assert len(keys) > 100  # the scan found the pages' strings
    assert "toast.enable" in keys and "error.invalid_password" in keys
    for lang in i18n.LANGUAGES:
        missing = sorted(k for k in keys if k not in load(lang))
        assert missing == [], lang


class VisibleText(html.parser.HTMLParser):
    """Text a reader would see in a template, once Jinja's tags are taken out: text nodes
    (outside <code>, <script> and <style>, which hold code, not language) and the title,
    placeholder, aria-label and alt attributes."""

    ATTRS = ("title", "placeholder", "aria-label", "alt")
    CODE = ("code", "script", "style")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.inside: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.CODE:
            self.inside.append(tag)
        self.found += [value or "" for name, value in attrs if name in self.ATTRS]

    def handle_endtag(self, tag: str) -> None:
        if self.inside and self.inside[-1] == tag:
            self.inside.pop()

    def handle_data(self, data: str) -> None:
        if not self.inside:
            self.found.append(data)

    @classmethod
    def words_in(cls, template: str) -> list[str]:
        """Runs of letters outside ``{{ }}`` and ``{% %}``; the product's name is no word."""
        # body_class fills an attribute of base.html: a CSS class, not text.
        source = re.sub(r"\{% block body_class %\}.*?\{% endblock %\}", " ", template)
        source = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", " ", source, flags=re.S)
        parser = cls()
        parser.feed(source)
        parser.close()
        text = " ".join(parser.found).replace("orpoll", " ")
        return re.findall(r"[^\W\d_]+", text)


def test_the_visible_text_check_finds_literal_text():
    assert VisibleText.words_in('<p title="Keys">{{ t("a") }}</p>') == ["Keys"]
    assert VisibleText.words_in("<button>Sign in</button>") == ["Sign", "in"]
    assert VisibleText.words_in("<input placeholder=\"{{ t('x') }}\"><code>ls -l</code>") == []
    assert VisibleText.words_in("<p>登录</p>") == ["登录"]


@pytest.mark.parametrize("path", TEMPLATES, ids=os.path.basename)
def test_templates_show_no_text_of_their_own(path):
    assert VisibleText.words_in(read(path)) == []


# A piece of an English sentence in a script: a capitalised word and another word ("Delete
# selected"), a space before words (" failed"), a capitalised word or two words before a
# space ("Checked ", "set to "). Class lists, class prefixes and CSS selectors ("line small",
# "badge ", "#keys tbody") look like none of these.
SENTENCE = re.compile(r"[A-Z][a-z]+ [A-Za-z]|^ +[A-Za-z]|^[A-Z][a-z]* +$|[A-Za-z] [A-Za-z]+ +$")


def sentences_in(script: str) -> list[str]:
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", script, flags=re.S)
    return [s for s in re.findall(r'"([^"\n]*)"', code) if SENTENCE.search(s)]


def test_the_script_check_finds_sentences():
    found = sentences_in('toast("Deleted " + n); el("span", {className: "line small"}, " failed")')
    assert found == ["Deleted ", " failed"]


def test_scripts_show_no_text_of_their_own():
    for path in SCRIPTS:
        assert sentences_in(read(path)) == [], path


@pytest.mark.parametrize(
    ("chosen", "header", "expected"),
    [
        (None, None, "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        (None, "en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        (None, "fr-FR, de;q=0.9", "en"),
        (None, "fr-FR, zh-TW;q=0.5", "zh"),
        (None, "en;q=0.2, zh;q=0.8", "zh"),
        (None, "zh;q=0, en", "en"),
        (None, "zh;q=bad, en;q=0.1", "en"),
        (None, "*", "en"),
        ("zh", "en", "zh"),
        ("en", "zh-CN", "en"),
        ("xx", "zh-CN", "zh"),
        ("", "zh-CN", "zh"),
    ],
)
def test_negotiation(chosen, header, expected):
    assert i18n.negotiate(chosen, header) == expected


def test_switch_links_keep_the_other_query_arguments():
    links = i18n.switch_links("/admin/login", "next=%2Fadmin%2Fsettings-page&lang=en")
    assert [link["href"] for link in links] == [
        "/admin/login?next=%2Fadmin%2Fsettings-page&lang=en",
        "/admin/login?next=%2Fadmin%2Fsettings-page&lang=zh",
    ]
    assert [link["label"] for link in links] == ["EN", "中文"]


def test_template_text_is_escaped_and_placeholders_filled():
    t = i18n.translator("en")
    assert str(t("dash.n_per_page", n="<b>")) == "&lt;b&gt; / page"
    assert (
        i18n.translate("zh", "error.login_throttled", wait=7) == "登录失败次数过多；请 7 秒后再试"
    )
    assert i18n.translate("zh", "no.such.key") == "no.such.key"
    assert i18n.translate("zh", "error.new_code", "the server's words") == "the server's words"
