"""People's text shown as typed: escaped for Streamlit's Markdown and for Plotly's labels."""

import re

import pandas as pd
import pytest
from markdown_support import parsed, shown

from ui.figures import hparam_figure, metric_traces
from ui.plain_text import chart_text, no_bidi, plain

HOSTILE = ["![t](http://203.0.113.9/t.png)", "[x](http://203.0.113.9/)", "$x^2$", "$$y$$",
           ":red[boom]", ":blue-badge[b]", ":material/home:", ":smile:", "<b>x</b>",
           "<img src=http://203.0.113.9/t.png>", "**bold**", "_it_", "`code`", "# head",
           "> quote", "- item", "1. item", "a | b", "www.example.com", "a@b.example",
           "http://203.0.113.9/t.png", "x&amp;y", "&#60;b&#62;", "back\\slash", "~~s~~"]
PUNCTUATION = r"[!-/:-@\[-`{-~]"


@pytest.mark.parametrize("text", HOSTILE)
def test_plain_leaves_markdown_no_syntax_and_shows_the_text_as_typed(text):
    markdown = plain(text)
    # Every ASCII punctuation mark, where all Markdown (and Streamlit's LaTeX, directives,
    # icons, shortcodes, autolinks and HTML) begins, is escaped: nothing is left to parse.
    assert re.fullmatch(rf"(?:\\{PUNCTUATION}|(?!{PUNCTUATION}).)*", markdown, re.S), markdown
    assert shown(markdown) == text


# The rewrites Streamlit's Markdown makes of parsed text (escapes no longer count there):
# GFM's autolinks of URLs and e-mail addresses, :streamlit: and emoji shortcodes, arrows.
TEXT_REWRITES = [r"(?i)(https?://|www(?=\.))[-.\w]+", r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+",
                 r":[\w+-]+:", r"(^|\s)(<->|->|<-|--|>=|<=|~=)(\s|$)"]


@pytest.mark.parametrize("text", [*HOSTILE, "see https://x.example/a and www.b.example",
                                  ":streamlit: :smile: :+1:", "a -> b <- c <-> d -- e >= f"])
def test_plain_leaves_nothing_for_streamlits_rewrites_of_parsed_text(text):
    text_node = parsed(plain(text))
    for rewrite in TEXT_REWRITES:
        assert not re.search(rewrite, text_node), (rewrite, text_node)
    assert shown(plain(text)) == text


def test_plain_writes_control_and_bidirectional_characters_as_escapes():
    assert shown(plain("evil\u202egpj.exe")) == r"evil\u202egpj.exe"
    assert shown(plain("two\nlines\x1b[2J")) == r"two\nlines\x1b[2J"
    assert "\u2066" not in plain("a\u2066b") and "\n" not in plain("a\nb")
    assert plain("lr sweep 3") == "lr sweep 3" and plain(42) == "42"


def test_chart_text_escapes_plotly_tags_and_entities():
    assert chart_text("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;"
    assert chart_text('<a href="http://203.0.113.9/">x</a>') == (
        '&lt;a href="http://203.0.113.9/"&gt;x&lt;/a&gt;')
    assert chart_text("x&amp;y") == "x&amp;amp;y"  # shown as typed, not as "x&y"
    assert chart_text("r\u202el") == r"r\u202el"
    assert chart_text("plain name") == "plain name"


def test_run_names_reach_plotly_escaped():
    frame = pd.DataFrame({"run_id": [1, 1, 2, 2], "key": ["val/loss"] * 4,
                          "step": [0, 10, 0, 10], "value": [3.0, 2.0, 3.1, 2.2]})
    traces = metric_traces(frame, names={1: "<b>x</b>", 2: "<a href='http://203.0.113.9'>y</a>"})
    assert [t["name"] for t in traces] == ["&lt;b&gt;x&lt;/b&gt;",
                                           "&lt;a href='http://203.0.113.9'&gt;y&lt;/a&gt;"]
    points = pd.DataFrame({"name": ["<b>x</b>", "**bold**"], "lr": [1e-3, 3e-3],
                           "best val loss": [2.0, 2.1]})
    fig = hparam_figure(points, "lr", "best val loss")
    assert list(fig.data[0].text) == ["&lt;b&gt;x&lt;/b&gt;", "**bold**"]


def test_a_sample_keeps_its_lines_but_not_its_bidirectional_controls():
    # Playground showed a prompt "... \u202erev :red[x]" as "... [x]der: ver".
    shown = no_bidi("a \u202erev\nline2 \u2067x")
    assert shown == "a \\u202erev\nline2 \\u2067x"
