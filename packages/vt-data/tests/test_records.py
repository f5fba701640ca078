"""Record schema: lossless Video-R1 JSON round trips and validation messages that name the field."""

import json

import pytest

from vt_data.records import (
    RecordError,
    Segment,
    VideoQA,
    load_records,
    validate,
    write_records,
)

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
