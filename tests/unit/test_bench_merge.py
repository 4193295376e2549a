"""bench/__main__.py: results.md names the commit measured and never silently merges sections
measured at different commits."""

from __future__ import annotations

import pytest

from bench.__main__ import MixedCommits, measured_commit, merge, section_commit


def section(title: str, commit: str | None) -> str:
    head = f"<!-- commit: {commit} -->\n" if commit else ""
    return f"{head}## {title}\n\n| a | b |\n"


def test_one_commit_is_merged_and_named() -> None:
    text = merge({"bench_a.md": section("A", "abc123"), "bench_b.md": section("B", "abc123")})
    assert "measured at commit `abc123`" in text
    assert "## A" in text and "## B" in text


@pytest.mark.parametrize("other", ["def456", None, "abc123+dirty"])
def test_different_unknown_or_dirty_commits_are_refused(other: str | None) -> None:
    sections = {"bench_a.md": section("A", "abc123"), "bench_b.md": section("B", other)}
    with pytest.raises(MixedCommits) as e:
        merge(sections)
    assert "bench_b.md" in str(e.value) and "CRYPTBOOT_BENCH_MIXED=mark" in str(e.value)


def test_mixed_commits_are_marked_on_request() -> None:
    text = merge({"bench_a.md": section("A", "abc123"), "bench_b.md": section("B", "def456")},
                 mixed="mark")
    assert "not measured in one run of one commit" in text
    assert "## A [measured at commit abc123]" in text
    assert "## B [measured at commit def456]" in text


def test_this_checkout_has_a_commit() -> None:
    c = measured_commit()
    assert c != "unknown" and len(c.split("+")[0]) == 12, c
    assert section_commit(section("A", c)) == c
