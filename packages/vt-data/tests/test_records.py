"""Record schema: lossless Video-R1 JSON round trips and validation messages that name the field."""

import json

import pytest

from vt_data.records import (
    RecordError,
    Segment,
    VideoQA,
    answer_from_solution,
    load_records,
    split_option_label,
    strip_option_prefix,
    validate,
    write_records,
)
from vt_data.trace import extract_answer_text

VIDEO_R1_ITEMS = [
    {
        "problem_id": 17,
        "problem": "What does the cook do right after whisking the batter?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. Puts it in the oven", "B. Pours it into a pan", "C. Adds sugar", "D. Serves it"],
        "process": "Let me check. <time>00:00-00:12</time> <caption>…</caption> <think>…</think> So B.",
        "solution": "<answer>B</answer>",
        "path": "./clips/cook_0042.mp4",
        "data_source": "YouCook2",
    },
    {
        "problem_id": 3,
        "problem": "How many litres does the tank hold after the refill?",
        "data_type": "video",
        "problem_type": "numerical",
        "original_question_type": "open",
        "options": None,
        "process": "",
        "solution": "<answer>7.5</answer>",
        "path": "./Bench/clip_0003.mp4",
        "data_source": "ExampleBench",
    },
]


def mc_record(**changes) -> VideoQA:
    base = VideoQA(problem="Which colour comes first?", path="v.mp4", data_source="synthetic",
                   options=["A. red", "B. green"], solution="<answer>A</answer>", duration=8.0,
                   segments=[Segment(0.0, 2.0, "a red square")], answer="A")
    return base.replace(**changes)


@pytest.mark.parametrize("item", VIDEO_R1_ITEMS, ids=["mc", "numerical"])
def test_video_r1_json_round_trips_unchanged(item):
    record = VideoQA.from_dict(item)
    assert record.to_dict() == item
    assert list(record.to_dict()) == list(item)  # key order too, for byte-stable rewrites


def test_record_json_record_round_trip_keeps_our_fields():
    record = mc_record(extra={"question_type": "first_colour"})
    again = VideoQA.from_json(record.to_json())
    assert again == record
    assert again.segments == [Segment(0.0, 2.0, "a red square")]


def test_file_round_trip_json_and_jsonl(tmp_path):
    records = [VideoQA.from_dict(item) for item in VIDEO_R1_ITEMS]
    for name in ("data.json", "data.jsonl"):
        assert write_records(records, tmp_path / name) == 2
        assert load_records(tmp_path / name) == records
    assert json.loads((tmp_path / "data.json").read_text()) == VIDEO_R1_ITEMS
    # The exact bytes: a .json list indented by 1 without a final newline, a .jsonl line per record.
    assert (tmp_path / "data.json").read_text(encoding="utf-8") == json.dumps(
        VIDEO_R1_ITEMS, ensure_ascii=False, indent=1)
    assert (tmp_path / "data.jsonl").read_text(encoding="utf-8") == "".join(
        r.to_json() + "\n" for r in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "data.jsonl"]  # no temporary file


def test_target_is_process_newline_solution():
    record = VideoQA.from_dict(VIDEO_R1_ITEMS[0])
    assert record.target == VIDEO_R1_ITEMS[0]["process"] + "\n<answer>B</answer>"
    assert record.gold == "B"


def test_sound_record_has_no_problems(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"\0")
    assert validate(mc_record(), video_root=tmp_path) == []


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"problem": "  "}, "problem", "empty"),
        ({"options": ["A. red", "C. green"]}, "options", "must start with 'B.'"),
        ({"solution": "<answer>C</answer>", "answer": None}, "solution", "not one of the option letters"),
        ({"solution": "", "answer": None}, "solution", "no gold answer"),
        ({"answer": "B"}, "answer", "disagrees"),
        ({"segments": [Segment(3.0, 1.0, "x")]}, "segments", "not after its start"),
        ({"segments": [Segment(6.0, 9.5, "x")]}, "segments", "past the video"),
        ({"problem_type": "essay"}, "problem_type", "not one of"),
        ({"duration": 0.0}, "duration", "positive"),
    ],
)
def test_each_bad_field_gets_a_message_naming_it(changes, field, fragment):
    problems = validate(mc_record(**changes))
    assert problems, changes
    assert any(p.field == field and fragment in p.message for p in problems), problems


def test_missing_video_is_reported_with_its_path(tmp_path):
    problems = validate(mc_record(), video_root=tmp_path)
    assert [p.field for p in problems] == ["path"]
    assert str(tmp_path / "v.mp4") in problems[0].message


def test_grounding_record_needs_a_span_answer():
    good = VideoQA(problem="a man opens the fridge", path="x.mp4", data_source="Charades-STA",
                   problem_type="grounding", solution="<answer>00:03-00:09</answer>")
    assert validate(good) == []
    bad = good.replace(solution="<answer>soon</answer>")
    assert [p.field for p in validate(bad)] == ["solution"]


def test_parse_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(VIDEO_R1_ITEMS[0]) + "\n" + '{"problem": 5, "path": "x"}\n')
    with pytest.raises(RecordError) as err:
        load_records(path)
    assert f"{path}:2" in str(err.value) and "'problem'" in str(err.value)

    path.write_text("{not json\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:1: invalid JSON"):
        load_records(path)


def test_nulls_and_integer_durations_survive_a_round_trip():
    item = {"problem": "q", "path": "v.mp4", "data_source": None, "process": None,
            "solution": "<answer>4</answer>", "problem_type": "numerical", "duration": 30}
    assert VideoQA.from_dict(item).to_json() == json.dumps(item)


def test_json_list_errors_name_the_index(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([VIDEO_R1_ITEMS[0], {"path": "x"}]))
    with pytest.raises(RecordError, match=r"bad.json\[1\]: field 'problem': is missing"):
        load_records(path)


# The one option parser, in the label forms each caller reads (they differed before it was shared).
@pytest.mark.parametrize(
    ("text", "form", "expected"),
    [
        # Records, Video-MME, VSI-Bench (the default): "A." "A:" "A)", with or without a space.
        ("B. a red square", {}, ("B", "a red square")),
        (" B :red ", {}, ("B", "red ")),
        ("B) red", {}, ("B", "red")),
        ("B.5 s", {}, ("B", "5 s")),
        ("B.", {}, ("B", "")),
        ("(B) red", {}, None),
        ("b. red", {}, None),
        # TempCompass question lines: "A." or "A)" only, so "Q: ..." stays in the stem.
        ("Q: how fast?", {"separators": ".)"}, None),
        ("B) quickly", {"separators": ".)"}, ("B", "quickly")),
        # LVBench: "(A)" only, nothing after the parenthesis required.
        ("(B) It hears a dog", {"separators": "", "parens": "required"}, ("B", "It hears a dog")),
        ("(B). dog", {"separators": "", "parens": "required"}, ("B", ". dog")),
        ("B. dog", {"separators": "", "parens": "required"}, None),
        # Teacher-written options: any of these forms, with a space after the label.
        ("(B) red", {"parens": "optional", "space_after": True}, ("B", "red")),
        ("(B). red", {"parens": "optional", "space_after": True}, ("B", "red")),
        ("B: red", {"parens": "optional", "space_after": True}, ("B", "red")),
        ("B.5 s", {"parens": "optional", "space_after": True}, None),
        ("B.red", {"parens": "optional", "space_after": True}, None),
    ],
)
def test_split_option_label_reads_each_sources_label_form(text, form, expected):
    assert split_option_label(text, **form) == expected


def test_strip_option_prefix_and_validation_use_the_default_label_form():
    assert strip_option_prefix("C:  blue") == "blue" and strip_option_prefix("(C) blue") == "(C) blue"
    assert validate(mc_record(options=["A: red", "B) green"])) == []
    problems = validate(mc_record(options=["(A) red", "B. green"]))
    assert [p.message for p in problems] == ["option 0 must start with 'A.', got '(A) red'"]
    assert [p.message for p in validate(mc_record(options=["A. red", "B.  "]))] == ["option B has no text"]


def test_the_gold_answer_is_the_first_answer_tag_a_model_answer_the_last():
    text = "<ANSWER> B </answer> then <answer>C</answer>"
    assert answer_from_solution(text) == "B" and extract_answer_text(text) == "C"
    # From the first opening tag to the first closing one, even across a second opening tag.
    assert answer_from_solution("<answer>A<answer>B</answer>") == "A<answer>B"
    assert extract_answer_text("<answer>A<answer>B</answer>") == "B"
    assert answer_from_solution("<answer>A") is None and answer_from_solution("") is None
