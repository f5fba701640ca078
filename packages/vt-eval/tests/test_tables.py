"""vt_eval.tables: the Markdown and CSV text both reports are made of (pipe tables, the table.md layout,
CSV with empty fields for missing values and either line ending)."""

from __future__ import annotations

from pathlib import Path

from vt_eval.tables import (
    EXCEL_LINE_END,
    csv_text,
    markdown_document,
    markdown_table_lines,
    number,
    percent,
    records_csv,
)


def test_pipe_table_and_numbers():
    lines = markdown_table_lines(["a", "b"], [["1", number(None)], ["x", number(2.345, 1)]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | – |", "| x | 2.3 |"]
    assert percent(0.123456789) == 12.3457 and percent(None) is None


def test_document_sections_follow_the_body():
    text = markdown_document(
        "T", "intro", ["body"], plots=[Path("out/plots/a.png")], skipped={"b.png": "no data"}, warnings=["w"]
    )
    assert text == (
        "# T\n\nintro\n\nbody\n"
        "\n## Plots\n\n![a](plots/a.png)\n- b.png skipped: no data\n"
        "\n## Warnings\n\n- w\n"
    )
    assert markdown_document("T", "intro", ["body"]) == "# T\n\nintro\n\nbody\n"


def test_csv_leaves_missing_values_empty():
    assert csv_text(["a", "b"], [[1.5, None], ["x,y", 0]]) == 'a,b\n1.5,\n"x,y",0\n'
    records = [{"a": None, "b": 2, "extra": 3}, {"b": 1}]
    assert records_csv(records, ["b", "a"], lineterminator=EXCEL_LINE_END) == "b,a\r\n2,\r\n1,\r\n"


def test_faithfulness_counts_stay_whole_and_means_over_seeds_get_one_decimal():
    from vt_eval.tables import faithfulness_cell

    assert faithfulness_cell("reliance_n", 43) == "43"
    assert faithfulness_cell("reliance_n", 97.66666666666667) == "97.7"
    assert faithfulness_cell("n", None) == "–" and faithfulness_cell("degenerate", 12.345) == "12.35"
