"""Source converters: real Video-Holmes / VRBench files, faithful small fixtures for the rest, counts."""

import json
from collections import Counter
from pathlib import Path

import pytest

from vt_data.converters import CONVERTERS, ConversionResult, convert, register_converter
from vt_data.records import RecordError, Segment, VideoQA, validate

EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"
HOLMES = EXTERNAL / "Video-Holmes" / "Pipeline"
VRBENCH = EXTERNAL / "VRBench" / "inference" / "data" / "VRBench_debug.jsonl"
HOLMES_FILMS = ("RSmjqss0XKQ", "dGS48Kcax5k")


def _all_valid(result: ConversionResult) -> None:
    for record in result.records:
        assert validate(record) == [], record.key
    assert result.counts["records"] == len(result.records)


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _golds(records):
    return "".join(r.gold for r in records)


# --- registry ---------------------------------------------------------------------------------------
def test_registry_lists_every_source():
    assert {"video_r1", "activitynet_captions", "charades_sta", "youcook2", "video_holmes", "vrbench",
            "star", "lvbench"} <= set(CONVERTERS)


def test_unknown_source_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'nope'.*activitynet_captions.*vrbench"):
        convert("nope", tmp_path / "x.json")


def test_unknown_option_lists_accepted_ones(tmp_path):
    file = _write(tmp_path / "anet.json", {})
    with pytest.raises(ValueError, match="does not take option.*colour.*path_template"):
        convert("activitynet_captions", file, colour="red")


def test_register_converter_adds_a_source_and_refuses_silent_shadowing(tmp_path):
    @register_converter("tiny_test_source")
    def tiny(path: Path, *, data_source: str = "Tiny") -> ConversionResult:
        record = VideoQA(problem=path.read_text().strip(), path="a.mp4", data_source=data_source,
                         options=["A. x", "B. y"], solution="<answer>B</answer>")
        return ConversionResult([record], Counter())

    try:
        file = tmp_path / "q.txt"
        file.write_text("Which?\n")
        result = convert("tiny_test_source", file, data_source="T2")
        assert result.counts["records"] == 1 and result.records[0].data_source == "T2"
        with pytest.raises(ValueError, match="already registered"):
            register_converter("tiny_test_source")(lambda path: ConversionResult())
    finally:
        CONVERTERS.pop("tiny_test_source", None)


def test_convert_validates_what_a_converter_returns(tmp_path):
    @register_converter("broken_test_source")
    def broken(path: Path) -> ConversionResult:
        return ConversionResult([VideoQA(problem="Q?", path="a.mp4", data_source="X", options=["A. x"])])

    try:
        file = _write(tmp_path / "b.json", [])
        with pytest.raises(RecordError, match="invalid record #0.*options"):
            convert("broken_test_source", file)
        assert convert("broken_test_source", file, check="false").counts["records"] == 1
    finally:
        CONVERTERS.pop("broken_test_source", None)


# --- video_r1 -----------------------------------------------------------------------------------------
VIDEO_R1_ITEMS = [
    {"problem_id": 1, "problem": "What colour is the cup the woman lifts?", "data_type": "video",
     "problem_type": "multiple choice", "original_question_type": "Object Recognition",
     "options": ["A. Red", "B. Blue", "C. Green", "D. White"], "process": "",
     "solution": "<answer>C</answer>", "path": "./Bench/clip_0001.mp4", "data_source": "ExampleBench"},
    {"problem_id": 2, "problem": "How many times does the dog jump?", "data_type": "video",
     "problem_type": "numerical", "original_question_type": "counting", "options": None,
     "process": "<think>I count them.</think>", "solution": "<answer>3</answer>",
     "path": "./Bench/clip_0002.mp4", "data_source": "ExampleBench"},
    {"problem_id": 3, "problem": "When does the man open the door?", "data_type": "video",
     "problem_type": "grounding", "options": None, "process": "", "solution": "<answer>00:12-00:20</answer>",
     "path": "clip_0003.mp4", "data_source": "ExampleBench", "duration": 30.5,
     "segments": [{"start": 12.0, "end": 20.0, "caption": "the man opens the door"}]},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_video_r1_round_trip_is_lossless(tmp_path, suffix):
    file = tmp_path / f"eval{suffix}"
    if suffix == ".json":
        _write(file, VIDEO_R1_ITEMS)
    else:
        file.write_text("".join(json.dumps(item) + "\n" for item in VIDEO_R1_ITEMS), encoding="utf-8")
    result = convert("video_r1", file)
    _all_valid(result)
    assert [r.to_dict() for r in result.records] == VIDEO_R1_ITEMS
    assert result.records[0].extra["original_question_type"] == "Object Recognition"


def test_video_r1_malformed_record_names_file_and_index(tmp_path):
    file = _write(tmp_path / "bad.json", [VIDEO_R1_ITEMS[0], {"problem": "Q?", "path": 5}])
    with pytest.raises(RecordError, match=r"bad\.json\[1\]: field 'path'"):
        convert("video_r1", file)


# --- ActivityNet Captions -------------------------------------------------------------------------
ANET = {
    "v_AAAAAAAAAAA": {"duration": 95.2, "timestamps": [[0.0, 12.4], [12.4, 60.3], [80.0, 97.5]],
                      "sentences": [" A man ties his shoes.", " He runs along the beach.",
                                    " He stops and stretches."]},
    "v_BBBBBBBBBBB": {"duration": 40.0, "timestamps": [[41.0, 45.0], [5.0, 9.5]],
                      "sentences": [" A dog barks at the gate.", " A girl opens the gate."]},
}


def test_activitynet_captions(tmp_path):
    result = convert("activitynet_captions", _write(tmp_path / "val_2.json", ANET))
    _all_valid(result)
    assert result.counts == Counter(records=4, videos=2, spans_clipped=1, spans_dropped=1)
    first = result.records[0]
    assert first.problem == "A man ties his shoes."
    assert first.problem_type == "grounding" and first.options is None
    assert first.solution == "<answer>00:00-00:12.4</answer>"
    assert first.segments == [Segment(0.0, 12.4, "A man ties his shoes.")]
    assert first.path == "v_AAAAAAAAAAA.mp4" and first.data_source == "ActivityNet"
    assert first.duration == 95.2 and first.extra == {"video_id": "v_AAAAAAAAAAA"}
    clipped = result.records[2]
    assert clipped.segments[0].end == 95.2 and clipped.gold == "01:20-01:35.2"
    # The span wholly past the end is dropped with its record; the other query of that video stays.
    assert result.records[3].problem_id == "v_BBBBBBBBBBB_1"


def test_activitynet_path_options(tmp_path):
    file = _write(tmp_path / "val_2.json", ANET)
    assert convert("activitynet_captions", file, video_ext="mkv").records[0].path == "v_AAAAAAAAAAA.mkv"
    templated = convert("activitynet_captions", file, path_template="anet/{youtube_id}{ext}")
    assert templated.records[0].path == "anet/AAAAAAAAAAA.mp4"


def test_activitynet_mismatched_lists_name_the_video_and_field(tmp_path):
    bad = {"v_CCCCCCCCCCC": {"duration": 10.0, "timestamps": [[0, 1]], "sentences": []}}
    with pytest.raises(RecordError, match=r"val_2\.json: field 'sentences': video 'v_CCCCCCCCCCC'"):
        convert("activitynet_captions", _write(tmp_path / "val_2.json", bad))


# --- Charades-STA -------------------------------------------------------------------------------------
CHARADES = (
    "XYZ12 3.5 9.2##a person opens the fridge.\n"
    "XYZ12 10.0 31.0##the person closes the door.\n"
    "\n"
    "QRS34 0 6.1##person sitting on a chair.\n"
)


def test_charades_sta_without_durations(tmp_path):
    file = tmp_path / "charades_sta_test.txt"
    file.write_text(CHARADES, encoding="utf-8")
    result = convert("charades_sta", file)
    _all_valid(result)
    assert result.counts == Counter(records=3, videos=2, no_duration=3)
    assert [r.duration for r in result.records] == [None, None, None]
    assert result.records[1].segments == [Segment(10.0, 31.0, "the person closes the door.")]
    assert result.records[0].gold == "00:03.5-00:09.2"
    assert [r.problem_id for r in result.records] == ["XYZ12_0", "XYZ12_1", "QRS34_0"]


@pytest.mark.parametrize("kind", ["dict", "json", "csv", "plain_csv"])
def test_charades_sta_durations_clip_and_count(tmp_path, kind):
    file = tmp_path / "charades_sta_test.txt"
    file.write_text(CHARADES, encoding="utf-8")
    table = {"XYZ12": 30.0, "QRS34": 20.5}
    if kind == "dict":
        durations = table
    elif kind == "json":
        durations = str(_write(tmp_path / "durations.json", table))
    elif kind == "csv":  # the official Charades_v1_test.csv layout, trimmed
        durations = tmp_path / "Charades_v1_test.csv"
        durations.write_text("id,subject,scene,length\nXYZ12,S1,Kitchen,30.0\nQRS34,S2,Bedroom,20.5\n")
    else:
        durations = tmp_path / "durations.csv"
        durations.write_text("XYZ12,30.0\nQRS34,20.5\n")
    result = convert("charades_sta", file, durations=durations)
    _all_valid(result)
    assert result.counts == Counter(records=3, videos=2, spans_clipped=1)
    assert result.records[1].segments[0].end == 30.0 and result.records[1].duration == 30.0
    assert result.records[1].gold == "00:10-00:30"


def test_charades_sta_video_missing_from_durations_is_counted(tmp_path):
    file = tmp_path / "charades_sta_test.txt"
    file.write_text(CHARADES, encoding="utf-8")
    result = convert("charades_sta", file, durations={"XYZ12": 40.0})
    assert result.counts["no_duration"] == 1 and result.records[2].duration is None


@pytest.mark.parametrize("line, field", [("XYZ12 3.5##no end time", "span"),
                                         ("XYZ12 3.5 abc##bad end", "end"),
                                         ("XYZ12 3.5 9.2 a person without separator", "sentence")])
def test_charades_sta_malformed_line_names_file_and_line(tmp_path, line, field):
    file = tmp_path / "charades_sta_test.txt"
    file.write_text(CHARADES + line + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"charades_sta_test\.txt:5: field '{field}'"):
        convert("charades_sta", file)


def test_charades_sta_malformed_durations_csv_names_line(tmp_path):
    file = tmp_path / "charades_sta_test.txt"
    file.write_text(CHARADES, encoding="utf-8")
    durations = tmp_path / "d.csv"
    durations.write_text("id,length\nXYZ12,30\nQRS34,long\n")
    with pytest.raises(RecordError, match=r"d\.csv:3: field 'length'"):
        convert("charades_sta", file, durations=str(durations))


# --- YouCook2 -------------------------------------------------------------------------------------------
YOUCOOK2 = {"database": {
    "AbCdEfGhIjK": {"duration": 120.5, "subset": "training", "recipe_type": "113",
                    "annotations": [{"segment": [10, 25], "id": 0, "sentence": "crack two eggs into a bowl"},
                                    {"segment": [30, 124], "id": 1, "sentence": "whisk the eggs with salt"}],
                    "video_url": "https://www.youtube.com/watch?v=AbCdEfGhIjK"},
    "LmNoPqRsTuV": {"duration": 200.0, "subset": "validation", "recipe_type": "201",
                    "annotations": [{"segment": [5, 40], "id": 0, "sentence": "slice the onion thinly"}],
                    "video_url": "https://www.youtube.com/watch?v=LmNoPqRsTuV"},
}}


def test_youcook2(tmp_path):
    file = _write(tmp_path / "youcookii_annotations_trainval.json", YOUCOOK2)
    result = convert("youcook2", file)
    _all_valid(result)
    assert result.counts == Counter(records=3, videos=2, spans_clipped=1)
    second = result.records[1]
    assert second.segments == [Segment(30.0, 120.5, "whisk the eggs with salt")]
    assert second.gold == "00:30-02:00.5" and second.data_source == "YouCook2"
    assert second.extra["subset"] == "training" and second.extra["recipe_type"] == "113"
    assert second.problem_id == "AbCdEfGhIjK_1"

    validation = convert("youcook2", file, subset="validation",
                         path_template="raw_videos/{subset}/{recipe_type}/{video_id}{ext}")
    assert validation.counts == Counter(records=1, videos=1, skipped_subset=1)
    assert validation.records[0].path == "raw_videos/validation/201/LmNoPqRsTuV.mp4"


def test_youcook2_malformed_segment_names_video_and_field(tmp_path):
    bad = {"database": {"AbCdEfGhIjK": {"duration": 50, "subset": "training", "recipe_type": "1",
                                        "annotations": [{"segment": [1], "id": 0, "sentence": "x"}]}}}
    with pytest.raises(RecordError, match="field 'segment': video 'AbCdEfGhIjK' annotation 0"):
        convert("youcook2", _write(tmp_path / "yc.json", bad))


# --- Video-Holmes (real files) --------------------------------------------------------------------------


def test_video_holmes_real_examples():
    questions = HOLMES / "example_questions"
    results = [convert("video_holmes", questions / f"{film}.json") for film in HOLMES_FILMS]
    records = [r for result in results for r in result.records]
    for result in results:
        _all_valid(result)
    assert len(records) == 16
    assert all(len(r.options) == 6 and r.options[5].startswith("F. ") for r in records)
    assert _golds(results[0].records) == "ABCABACF"
    assert _golds(results[1].records) == "DCDACCCC"
    types = ["SR", "IMC", "TCI", "TA", "MHR", "PAR", "PAR", "CTI"]
    for result in results:
        assert [r.extra["original_question_type"] for r in result.records] == types
    first = records[0]
    assert first.path == "RSmjqss0XKQ.mp4" and first.data_source == "Video-Holmes"
    assert first.problem_id == "RSmjqss0XKQ_1" and first.extra["question_id"] == 1
    assert first.extra["explanation"] and first.segments is None
    assert "video_segments" not in first.extra


def test_video_holmes_annotations_become_film_segments():
    result = convert("video_holmes", HOLMES / "example_questions" / "RSmjqss0XKQ.json",
                     annotations_dir=str(HOLMES / "example_annotations"))
    _all_valid(result)
    spans = [tuple(s[:2]) for s in result.records[0].extra["video_segments"]]
    assert spans == [(0.0, 37.0), (37.0, 90.0), (90.0, 147.0)]
    assert result.records[0].extra["video_segments"][0][2].startswith("In the empty office")
    assert all(r.segments is None for r in result.records)
    assert result.counts["annotation_segments"] == 3 and "annotations_missing" not in result.counts


def test_video_holmes_missing_annotation_file_is_counted(tmp_path):
    result = convert("video_holmes", HOLMES / "example_questions" / "dGS48Kcax5k.json",
                     annotations_dir=tmp_path)
    assert result.counts["annotations_missing"] == 1
    assert all("video_segments" not in r.extra for r in result.records)


def test_video_holmes_bad_answer_names_index_and_field(tmp_path):
    options = {letter: f"option {letter}" for letter in "ABCDEF"}
    items = [{"video ID": "abcDEF12345", "Question ID": 1, "Question Type": "TA", "Question": "Why?",
              "Options": options, "Answer": "C", "Explanation": "..."},
             {"video ID": "abcDEF12345", "Question ID": 2, "Question Type": "SR", "Question": "Who?",
              "Options": options, "Answer": "G", "Explanation": "..."}]
    with pytest.raises(RecordError, match=r"holmes\.json:1: field 'Answer'"):
        convert("video_holmes", _write(tmp_path / "holmes.json", items))


# --- VRBench (real file) ----------------------------------------------------------------------------------


def test_vrbench_real_debug_file():
    result = convert("vrbench", VRBENCH)
    _all_valid(result)
    records = result.records
    assert len(records) == 13
    assert all(r.option_letters == list("ABCD") for r in records)
    by_video = {vid: [r for r in records if r.extra["video_id"] == vid]
                for vid in ("TZk_p-q8Fzo", "eb5vwy4GSSs")}
    assert _golds(by_video["TZk_p-q8Fzo"]) == "DBDDACC"
    assert _golds(by_video["eb5vwy4GSSs"]) == "DBBAAB"
    assert result.counts["steps_with_span"] == 28 and result.counts["steps_without_span"] == 5
    assert sum(len(r.segments) for r in records) == 28
    first = records[0]
    assert (first.segments[0].start, first.segments[0].end) == (464.0, 508.0)
    assert first.segments[0].caption == "A group of people explore the temple ruins, showing interest."
    assert first.path == "VRBench/videos/v001/TZk_p-q8Fzo.mp4" and first.problem_id == "TZk_p-q8Fzo_qa1"
    types = Counter(r.extra["original_question_type"] for r in records)
    assert types["Counting Porblems"] == 4
    # A span followed by a period leaves the sentence's own period, not " .".
    assert by_video["eb5vwy4GSSs"][0].segments[0].caption.endswith("kissing her lover.")
    summaries = [r for r in records if r.extra["original_question_type"] == "Event Summarization"]
    assert len(summaries) == 2 and all(r.segments == [] for r in summaries)
    assert {r.extra["video_read_type"] for r in records} == {"av", "decord"}


def test_vrbench_malformed_line_names_line(tmp_path):
    file = tmp_path / "vr.jsonl"
    good = {"video_id": "vid00000001", "video_path": "VRBench/videos/v001/vid00000001.mp4",
            "video_read_type": "decord", "video_summary": "...", "mcq": {}}
    bad = dict(good, mcq={"qa1": {"question": "Why?", "options": {"A": "x", "C": "y"}, "answer": "A"}})
    file.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"vr\.jsonl:2: field 'options': video 'vid00000001' qa1"):
        convert("vrbench", file)


# --- STAR ---------------------------------------------------------------------------------------------------
def _star_item(qid, answer, start=11.2, end=19.6):
    choices = ["The towel.", "The blanket.", "The clothes.", "The shoe."]
    return {"question_id": qid, "question": "Which object was tidied up by the person?",
            "video_id": "6H78U", "start": start, "end": end, "answer": answer,
            "question_program": [{"function": "Situations", "value_input": []}],
            "choices": [{"choice_id": i, "choice": c, "choice_program": []} for i, c in enumerate(choices)],
            "situations": {"000199": {"rel_pairs": [], "rel_labels": [], "actions": []}}}


def test_star(tmp_path):
    items = [_star_item("Interaction_T1_13", "The clothes."), _star_item("Sequence_T3_7", "The towel.", 5, 5),
             _star_item("Feasibility_T5_2", None)]
    result = convert("star", _write(tmp_path / "STAR_val.json", items))
    _all_valid(result)
    assert result.counts == Counter(records=2, videos=1, segments_dropped=1, skipped_no_answer=1)
    first = result.records[0]
    assert first.options == ["A. The towel.", "B. The blanket.", "C. The clothes.", "D. The shoe."]
    assert first.gold == "C" and first.problem_id == "Interaction_T1_13"
    assert first.segments == [Segment(11.2, 19.6, "")]
    assert first.extra["original_question_type"] == "Interaction"
    assert (first.extra["start"], first.extra["end"]) == (11.2, 19.6)
    assert first.path == "6H78U.mp4" and "situations" not in first.extra
    assert result.records[1].gold == "A" and result.records[1].segments == []


def test_star_answer_not_among_choices(tmp_path):
    items = [_star_item("Interaction_T1_13", "The clothes."), _star_item("Interaction_T1_14", "The cup.")]
    with pytest.raises(RecordError, match=r"STAR_val\.json:1: field 'answer'.*matches no choice"):
        convert("star", _write(tmp_path / "STAR_val.json", items))


# --- LVBench ------------------------------------------------------------------------------------------------
def _lvbench_line(key, minutes, qa):
    return json.dumps({"key": key, "type": "cartoon", "qa": qa,
                       "video_info": {"start_time": "00:00:00", "end_time": "01:30:00",
                                      "resolution": "1280x720", "duration_minutes": minutes,
                                      "fps": 25.0}}) + "\n"


def test_lvbench(tmp_path):
    qa = [{"uid": "101", "question": "What year appears in the opening caption?\n(A) 1636\n(B) 1366\n"
                                     "(C) 1363\n(D) 1633", "answer": "D",
           "question_type": ["key information retrieval"], "time_reference": "00:15-00:19"},
          {"uid": "102", "question": "Why does the cat leave the house?\n(A) It is hungry\n"
                                     "(B) It hears a dog\n(C) It is chased\n(D) It is bored", "answer": "B",
           "question_type": ["reasoning", "event understanding"], "time_reference": "1:29:50-1:31:00"},
          {"uid": "103", "question": "What happens last?\n(A) Rain\n(B) Snow\n(C) Sun\n(D) Fog",
           "answer": "C", "question_type": ["summarization"], "time_reference": ""}]
    file = tmp_path / "video_info.meta.jsonl"
    file.write_text(_lvbench_line("6J6eZ5N2B-o", 90.0, qa), encoding="utf-8")
    result = convert("lvbench", file)
    _all_valid(result)
    assert result.counts == Counter(records=3, videos=1, segments_clipped=1, no_time_reference=1)
    first, second, third = result.records
    assert first.problem == "What year appears in the opening caption?"
    assert first.options == ["A. 1636", "B. 1366", "C. 1363", "D. 1633"] and first.gold == "D"
    assert first.segments == [Segment(15.0, 19.0, "")] and first.duration == 5400.0
    assert first.problem_id == "101" and first.path == "6J6eZ5N2B-o.mp4"
    assert first.extra["original_question_type"] == "key information retrieval"
    assert second.segments == [Segment(5390.0, 5400.0, "")]
    assert second.extra["question_types"] == ["reasoning", "event understanding"]
    assert third.segments == [] and third.extra["time_reference"] == ""


def test_lvbench_options_are_only_parenthesised_letters(tmp_path):
    # "A." is not an LVBench option label: such a line is stem text before the options, an error after.
    qa = [{"uid": 1, "question": "Which note is right?\nA. first note\n(A) x \n(B)y", "answer": "(B)",
           "question_type": "reasoning", "time_reference": ""}]
    file = tmp_path / "video_info.meta.jsonl"
    file.write_text(_lvbench_line("aaa", 10, qa), encoding="utf-8")
    [record] = convert("lvbench", file).records
    assert record.problem == "Which note is right?\nA. first note" and record.options == ["A. x", "B. y"]
    assert record.gold == "B"
    qa[0]["question"] = "Which note is right?\n(A) x\n(B) y\nC. z"
    file.write_text(_lvbench_line("aaa", 10, qa), encoding="utf-8")
    with pytest.raises(RecordError, match="text after the options: 'C. z'"):
        convert("lvbench", file)


def test_lvbench_question_without_options_names_line_and_field(tmp_path):
    ok = [{"uid": 1, "question": "Q?\n(A) a\n(B) b", "answer": "A", "question_type": ["reasoning"],
           "time_reference": "00:01-00:02"}]
    bad = [{"uid": 2, "question": "Q without options?", "answer": "A", "question_type": ["reasoning"],
            "time_reference": ""}]
    file = tmp_path / "video_info.meta.jsonl"
    file.write_text(_lvbench_line("aaa", 10, ok) + _lvbench_line("bbb", 10, bad), encoding="utf-8")
    with pytest.raises(RecordError, match=r"meta\.jsonl:2: field 'question': video 'bbb' qa 0"):
        convert("lvbench", file)


def test_invalid_json_names_file_and_line(tmp_path):
    file = tmp_path / "broken.json"
    file.write_text('{"v_x": {"duration": 1,\n  oops}}', encoding="utf-8")
    with pytest.raises(RecordError, match=r"broken\.json:2: invalid JSON"):
        convert("activitynet_captions", file)
