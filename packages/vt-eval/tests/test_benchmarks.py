"""Benchmark loaders: the real Video-Holmes / VRBench files (facts from benchmarks.md §6), faithfully
formatted invented input for the rest, the registry, and scorer oracles on real golds (§6.5)."""

import json
from pathlib import Path

import pytest

from vt_data.records import RecordError, VideoQA, validate
from vt_data.scoring import score_answer
from vt_eval.benchmarks import BENCHMARKS, Benchmark, list_benchmarks, load_benchmark, register_benchmark
from vt_eval.metrics import accuracy_summary

EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"
HOLMES = EXTERNAL / "Video-Holmes" / "Pipeline"
VRBENCH = EXTERNAL / "VRBench" / "inference" / "data" / "VRBench_debug.jsonl"

# benchmarks.md §6.2 / §6.1
HOLMES_GOLDS = "ABCABACF" + "DCDACCCC"  # RSmjqss0XKQ then dGS48Kcax5k
HOLMES_TYPES = ["SR", "IMC", "TCI", "TA", "MHR", "PAR", "PAR", "CTI"] * 2
VRBENCH_GOLDS = "DBDDACC" + "DBBAAB"  # TZk_p-q8Fzo qa1..qa7, eb5vwy4GSSs qa1..qa6


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _golds(bench: Benchmark) -> str:
    return "".join(r.gold for r in bench)


def _all_valid(bench: Benchmark) -> None:
    for record in bench:
        assert validate(record) == [], record.key
    assert bench.facts["records"] == len(bench)


# --- registry ------------------------------------------------------------------------------------------
def test_registry_has_every_benchmark_of_the_issue():
    assert set(list_benchmarks()) >= {
        "video_holmes", "cg_bench_reasoning", "vrbench", "video_r1_json", "vsi_bench", "videommmu", "mmvu",
        "mvbench", "tempcompass", "video_mme", "synthetic", "charades_sta", "activitynet_captions"}


def test_unknown_benchmark_option_and_path_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'nope'.*video_holmes"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_benchmark("mmvu", tmp_path / "missing.json")
    file = _write(tmp_path / "v.json", [])
    with pytest.raises(ValueError, match="does not take option.*colour.*include_open.*limit"):
        load_benchmark("mmvu", file, colour="red")


def test_a_user_registers_a_benchmark_without_touching_the_harness(tmp_path):
    @register_benchmark("my_bench_test")
    def load_my_bench(path, *, video_root=None, split="test"):
        rows = json.loads(path.read_text())
        records = [VideoQA(problem=r["q"], path=f"{r['vid']}.mp4", data_source="Mine",
                           options=["A. x", "B. y"], solution=f"<answer>{r['gold']}</answer>",
                           extra={"kind": r["kind"]}) for r in rows if r["split"] == split]
        return Benchmark("my_bench_test", records, category_field="kind", video_root=video_root)

    try:
        rows = [{"q": "Q1?", "vid": "v1", "gold": "A", "kind": "k1", "split": "test"},
                {"q": "Q2?", "vid": "v2", "gold": "B", "kind": "k2", "split": "dev"},
                {"q": "Q3?", "vid": "v3", "gold": "B", "kind": "k2", "split": "test"}]
        file = _write(tmp_path / "m.json", rows)
        bench = load_benchmark("my_bench_test", file, video_root=tmp_path, split="test")
        assert _golds(bench) == "AB" and bench.categories == ["k1", "k2"] and bench.video_root == tmp_path
        assert bench.facts["options"] == {"split": "test"}
        # The two options every benchmark takes.
        small = load_benchmark("my_bench_test", file, limit="1", category_field="data_source")
        assert len(small) == 1 and small.facts["limit"] == 1 and small.categories == ["Mine"]
        with pytest.raises(ValueError, match="already registered"):
            register_benchmark("my_bench_test")(lambda path, **kw: None)
    finally:
        BENCHMARKS.pop("my_bench_test", None)


# --- the real files ----------------------------------------------------------------------------------
def test_video_holmes_example_questions_are_16_records_with_their_golds_and_types():
    bench = load_benchmark("video_holmes", HOLMES / "example_questions",
                           annotations_dir=HOLMES / "example_annotations")
    _all_valid(bench)
    assert len(bench) == 16 and bench.metric == "accuracy"
    assert _golds(bench) == HOLMES_GOLDS
    assert all(len(r.options) == 6 and r.options[5].startswith("F. ") for r in bench)
    assert [bench.category(r) for r in bench] == HOLMES_TYPES
    assert bench.facts["videos"] == 2 and bench.facts["annotation_segments"] == 5
    assert bench.records[0].extra["video_segments"][2][:2] == [90.0, 147.0]  # 01:30-02:27
    one = load_benchmark("video_holmes", HOLMES / "example_questions" / "dGS48Kcax5k.json")
    assert _golds(one) == HOLMES_GOLDS[8:] and one.records[0].path == "dGS48Kcax5k.mp4"


def test_vrbench_debug_file_is_13_mcqs_with_golds_and_unknown_categories_passing_through():
    bench = load_benchmark("vrbench", VRBENCH)
    _all_valid(bench)
    assert len(bench) == 13 and _golds(bench) == VRBENCH_GOLDS
    assert all(r.option_letters == list("ABCD") for r in bench)
    cats = [bench.category(r) for r in bench]
    assert cats.count("Counting Porblems") == 4  # the upstream typo is kept
    assert set(bench.categories) == {"Counting Porblems", "Implicit Inference", "Logical Linkage",
                                     "Event Attribution", "Event Summarization", "Hypothetical Reasoning",
                                     "Event Prediction"}
    assert bench.facts["steps_with_span"] == 28 and bench.facts["steps_without_span"] == 5
    assert (bench.records[0].segments[0].start, bench.records[0].segments[0].end) == (464.0, 508.0)


# --- scorer oracles on the real golds (benchmarks.md §6.5) -------------------------------------------
def test_scorer_oracles_on_real_golds():
    holmes = load_benchmark("video_holmes", HOLMES / "example_questions")
    for bench in (holmes, load_benchmark("vrbench", VRBENCH)):
        records = bench.records
        golds = [r.gold for r in records]
        gold_scores = [score_answer(f"<answer>{g}</answer>", r) for g, r in zip(golds, records, strict=True)]
        assert accuracy_summary(gold_scores)["accuracy"] == 1.0
        # A fixed rotation A, B, C, ... over each question's letters: accuracy = matches / N, exactly.
        rotation = [r.option_letters[i % len(r.option_letters)] for i, r in enumerate(records)]
        expected = sum(p == g for p, g in zip(rotation, golds, strict=True)) / len(records)
        scores = [score_answer(f"<answer>{p}</answer>", r) for p, r in zip(rotation, records, strict=True)]
        assert accuracy_summary(scores)["accuracy"] == expected
        # "(A)" / "A." in the tag: wrong when strict, right when lenient.
        for form in ("({})", "{}."):
            outputs = [f"<answer>{form.format(g)}</answer>" for g in golds]
            assert sum(score_answer(o, r) for o, r in zip(outputs, records, strict=True)) == 0
            lenient = [score_answer(o, r, mode="lenient") for o, r in zip(outputs, records, strict=True)]
            assert sum(lenient) == len(golds)
    # Always answering "A" on Video-Holmes: 4 of the 16 golds are A.
    summary = accuracy_summary([score_answer("<answer>A</answer>", r) for r in holmes],
                               [holmes.category(r) for r in holmes])
    assert summary["accuracy"] == 4 / 16 and summary["per_category"]["PAR"] == {"n": 4, "accuracy": 0.25}


# --- invented, faithfully formatted input ------------------------------------------------------------
def _cg_item(qid, sub, right, choices, clue, duration=100, answer=None):
    return {"qid": qid, "video_uid": f"vid{qid:03d}", "question": f"Question {qid}?", "choices": choices,
            "right_answer": right, "answer": answer if answer is not None else choices[ord(right) - 65],
            "clue_intervals": clue, "domain": "Science & Technology", "sub_category": sub,
            "duration": duration}


def test_cg_bench_reasoning_keeps_cognition_by_default_and_maps_clues_to_segments(tmp_path):
    seven = [f"opt{i}" for i in range(7)]
    file = _write(tmp_path / "cgbench_mini.json", [
        _cg_item(1, "Event Cognition", "B", seven, [[10, 20], [90, 130]]),
        _cg_item(2, "Entity Perception", "A", seven[:5], [[0, 5]]),
        _cg_item(3, "Hallucination", "C", seven[:6], []),
        _cg_item(4, "Time Cognition", "H", [f"t{i}" for i in range(8)], [[5, 6]], answer="not t7"),
    ])
    bench = load_benchmark("cg_bench_reasoning", file)
    _all_valid(bench)
    assert [r.problem_id for r in bench] == [1, 4] and _golds(bench) == "BH"
    assert bench.records[0].options[:2] == ["A. opt0", "B. opt1"] and len(bench.records[1].options) == 8
    assert [(s.start, s.end) for s in bench.records[0].segments] == [(10.0, 20.0), (90.0, 100.0)]
    assert bench.categories == ["Event Cognition", "Time Cognition"] and bench.records[0].path == "vid001.mp4"
    assert bench.facts["excluded_sub_category"] == 2 and bench.facts["clue_intervals_clipped"] == 1
    assert bench.facts["answer_text_disagrees_with_right_answer"] == 1
    assert "unverified" in bench.facts["subset"]
    assert len(load_benchmark("cg_bench_reasoning", file, sub_categories="all")) == 4
    assert len(load_benchmark("cg_bench_reasoning", file, sub_category_suffix="Perception")) == 1
    assert [r.problem_id for r in load_benchmark("cg_bench_reasoning", file,
                                                 sub_categories="Hallucination,Time Cognition")] == [3, 4]


def test_video_r1_json_reads_in_domain_splits_and_fills_data_source(tmp_path):
    items = [
        {"problem_id": 1, "problem": "What happens first?", "data_type": "video",
         "problem_type": "multiple choice",
         "original_question_type": "Sequence", "options": ["A. x", "B. y", "C. z", "D. w"], "process": "",
         "solution": "<answer>C</answer>", "path": "./STAR/clip_1.mp4", "data_source": ""},
        {"problem_id": 2, "problem": "How many litres?", "data_type": "video", "problem_type": "numerical",
         "original_question_type": "open", "options": None, "process": "", "solution": "<answer>7.5</answer>",
         "path": "./STAR/clip_2.mp4", "data_source": "STAR"},
    ]
    bench = load_benchmark("video_r1_json", _write(tmp_path / "star_test.json", items), data_source="STAR")
    _all_valid(bench)
    assert _golds(bench) == "C7.5" and [r.data_source for r in bench] == ["STAR", "STAR"]
    assert bench.categories == ["Sequence", "open"] and bench.facts["problem_types"] == {
        "multiple choice": 1, "numerical": 1}


def test_synthetic_test_split_loads_with_segments_and_its_folder_as_video_root(tmp_path):
    from vt_data.synthetic import build_tiny_dataset

    summary = build_tiny_dataset(tmp_path, num_train_clips=1, num_test_clips=1)
    bench = load_benchmark("synthetic", tmp_path / "test.jsonl")
    _all_valid(bench)
    assert len(bench) == summary["splits"]["test"]["samples"] and bench.video_root == tmp_path
    assert all(r.segments and r.segments[0].caption for r in bench)
    assert set(bench.categories) <= set(summary["splits"]["test"]["question_types"])
    assert all(validate(r, video_root=bench.video_root) == [] for r in bench)  # the videos are there
    assert len(load_benchmark("synthetic", tmp_path)) == len(bench)  # the folder works too


def test_vsi_bench_types_mca_as_choice_and_na_as_regression(tmp_path):
    lines = [
        {"id": 1, "dataset": "scannet", "scene_name": "scene0001_00",
         "question_type": "object_rel_direction_easy",
         "question": "Standing by the bed facing the door, is the lamp to my left or right?",
         "options": ["A. left", "B. right"], "ground_truth": "B"},
        {"id": 2, "dataset": "arkitscenes", "scene_name": "42", "question_type": "object_counting",
         "question": "How many chairs are in this room?", "ground_truth": "4"},
        {"id": 3, "dataset": "scannetpp", "scene_name": "abc", "question_type": "room_size_estimation",
         "question": "How large is the room in square meters?", "ground_truth": "21.5"},
    ]
    file = _write(tmp_path / "test.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    bench = load_benchmark("vsi_bench", file)
    _all_valid(bench)
    assert bench.metric == "vsi_bench" and bench.facts["mra_variant"] == "vsibench"
    assert [r.problem_type for r in bench] == ["multiple choice", "regression", "regression"]
    assert _golds(bench) == "B421.5" and bench.records[0].options == ["A. left", "B. right"]
    assert bench.records[1].path == "arkitscenes/42.mp4"
    assert (bench.facts["mca"], bench.facts["na"]) == (1, 2)
    assert score_answer("<answer>4</answer>", bench.records[1]) == 1.0
    assert bench.categories[0] == "object_rel_direction_easy"


def test_vsi_bench_keeps_options_lettered_with_a_colon_and_maps_gold_text_to_its_letter(tmp_path):
    line = {"id": 7, "dataset": "scannet", "scene_name": "s", "question_type": "route_planning",
            "question": "Which way?", "options": ["A: left", "B: right"], "ground_truth": "right"}
    bench = load_benchmark("vsi_bench", _write(tmp_path / "test.jsonl", json.dumps(line) + "\n"))
    _all_valid(bench)
    assert bench.records[0].options == ["A: left", "B: right"] and _golds(bench) == "B"
    assert bench.facts["gold_text_mapped_to_letter"] == 1
    # A label without text after it is not taken as the option's letter: the options get letters.
    line.update(options=["A.", "B. right"], ground_truth="B")
    bench = load_benchmark("vsi_bench", _write(tmp_path / "test.jsonl", json.dumps(line) + "\n"))
    assert bench.records[0].options == ["A. A.", "B. B. right"]


def test_videommmu_tracks_strip_image_tags_and_open_items_become_numerical(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "perception_video.json", {"Perception": {"0": {
        "id": "dev_Art_Theory_1", "link_selected": "https://www.youtube.com/watch?v=XXXXXXXXXXX",
        "question": "Which colour dominates?", "options": ["red", "green", "blue"], "answer": "C",
        "question_type": "multiple-choice"}}})
    _write(folder / "comprehension_video.json", {"Comprehension": {}})
    _write(folder / "adaptation_video.json", {"Adaptation": {
        "0": {"id": "dev_Physics_7", "link_selected": "u",
              "question": "<image 1> Which force keeps the block at rest?",
              "options": ["gravity", "friction", "tension"], "answer": "B",
              "question_type": "multiple-choice"},
        "1": {"id": "test_Math_3", "link_selected": "u", "question": "<image 1> What is x?", "options": [],
              "answer": "12.5", "question_type": "open"}}})
    bench = load_benchmark("videommmu", folder)
    _all_valid(bench)
    assert [r.problem_type for r in bench] == ["multiple choice", "multiple choice", "numerical"]
    assert [r.problem for r in bench][1:] == ["Which force keeps the block at rest?", "What is x?"]
    assert _golds(bench) == "CB12.5" and bench.records[1].options[1] == "B. friction"
    assert [bench.category(r) for r in bench] == ["Perception", "Adaptation", "Adaptation"]
    assert bench.records[1].extra["discipline"] == "Physics" and bench.records[2].options is None
    assert bench.facts["image_tags_stripped"] == 2
    assert bench.records[0].path == "Perception/dev_Art_Theory_1.mp4"
    assert len(load_benchmark("videommmu", folder, tracks="adaptation")) == 2


def _mmvu_item(i, qtype, answer, choices=None, subject="Chemistry"):
    return {"id": f"validation_{i}", "video": f"https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/"
            f"{subject}/{i}.mp4", "youtube_url": "https://www.youtube.com/watch?v=x", "question_type": qtype,
            "metadata": {"subject": subject, "textbook": "t", "knowledge": "k", "rationale": "r"},
            "question": f"Question {i}?", "choices": choices or {}, "answer": answer}


def test_mmvu_keeps_multiple_choice_and_counts_the_excluded_open_items(tmp_path):
    choices = {"A": "O2", "B": "CO2", "C": "H2", "D": "N2", "E": "Cl2"}
    file = _write(tmp_path / "validation.json", [
        _mmvu_item(1, "multiple-choice", "C", choices), _mmvu_item(2, "open-ended", "Because it oxidises."),
        _mmvu_item(3, "multiple-choice", "E", choices, subject="Biology")])
    bench = load_benchmark("mmvu", file)
    _all_valid(bench)
    assert _golds(bench) == "CE"
    assert bench.facts["excluded_open"] == 1 and bench.facts["include_open"] is False
    assert bench.records[0].options[4] == "E. Cl2" and bench.records[0].path == "videos/Chemistry/1.mp4"
    assert bench.categories == ["Chemistry", "Biology"]
    full = load_benchmark("mmvu", file, include_open="true")
    assert [r.problem_type for r in full] == ["multiple choice", "free-form", "multiple choice"]
    assert full.facts["excluded_open"] == 0


def test_mvbench_letters_follow_candidates_and_gold_is_found_by_text(tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    _write(folder / "action_sequence.json", [
        {"video": "clip_0123.mp4", "question": "What is the person doing with the box?",
         "candidates": ["opening it", "closing it", "lifting it"], "answer": "closing it"},
        {"video": "clip_0124.mp4", "question": "What did the person do first?",
         "candidates": ["sat down", "stood up", "ate", "drank"], "answer": "drank",
         "start": 1.5, "end": 9.0}])
    _write(folder / "object_shuffle.json", [
        {"video": "s.mp4", "question": "Where is the ball?", "candidates": ["left", "middle", "right"],
         "answer": "left"}])
    bench = load_benchmark("mvbench", folder, video_dirs={"object_shuffle": "perception/videos"})
    _all_valid(bench)
    assert _golds(bench) == "BDA"
    assert bench.records[0].options == ["A. opening it", "B. closing it", "C. lifting it"]
    assert [r.path for r in bench] == ["action_sequence/clip_0123.mp4", "action_sequence/clip_0124.mp4",
                                       "perception/videos/s.mp4"]
    assert bench.categories == ["action_sequence", "object_shuffle"]
    assert bench.records[1].extra["start"] == 1.5
    _write(folder / "zz_bad.json",
           [{"video": "b.mp4", "question": "Q?", "candidates": ["a", "b"], "answer": "c"}])
    with pytest.raises(RecordError, match="matches no candidate"):
        load_benchmark("mvbench", folder)


def test_tempcompass_splits_options_out_of_the_question_and_reads_the_answer_line(tmp_path):
    data = {"v_0042": {
        "speed": [{"question": "How fast does the car move?\nA. slowly\nB. quickly\nC. it does not move",
                   "answer": "B. quickly"}],
        "direction": [{"question": "Which way does the arrow point?\nA. up\nB. down", "answer": "A. up"}]}}
    bench = load_benchmark("tempcompass", _write(tmp_path / "multi-choice.json", data))
    _all_valid(bench)
    assert _golds(bench) == "BA" and bench.records[0].problem == "How fast does the car move?"
    assert bench.records[0].options == ["A. slowly", "B. quickly", "C. it does not move"]
    assert bench.categories == ["speed", "direction"] and bench.records[0].path == "v_0042.mp4"
    # "Q:" is no TempCompass option label (only "A." and "A)" are): the line stays in the stem.
    data["v_0042"]["direction"][0]["question"] = "Q: Which way does the arrow point?\nA) up\nB) down"
    bench = load_benchmark("tempcompass", _write(tmp_path / "q.json", data))
    assert bench.records[1].problem == "Q: Which way does the arrow point?"
    assert bench.records[1].options == ["A. up", "B. down"] and _golds(bench) == "BA"
    data["v_0042"]["speed"][0]["answer"] = "B. slowly"  # letter and text disagree
    with pytest.raises(RecordError, match="does not match an option"):
        load_benchmark("tempcompass", _write(tmp_path / "bad.json", data))


VIDEO_MME_WITH_TRAILING_COMMAS = """[
  {"video_id": "901", "duration": "short", "domain": "Knowledge", "sub_category": "Geography",
   "questions": [
     {"question_id": "901-1", "task_type": "Counting Problem", "question": "How many bridges, ] are shown?",
      "options": ["A. 1", "B. 2", "C. 3", "D. 4",], "answer": "C", "response": "",},
     {"question_id": "901-2", "task_type": "Object Recognition", "question": "What is red?",
      "options": ["A. a car", "B. a bus", "C. a sign", "D. a roof"], "answer": "", "response": ""},
   ],
  },
]
"""


def test_video_mme_tolerates_the_official_templates_trailing_commas(tmp_path):
    bench = load_benchmark("video_mme", _write(tmp_path / "output_test_template.json",
                                               VIDEO_MME_WITH_TRAILING_COMMAS))
    _all_valid(bench)
    assert len(bench) == 1 and _golds(bench) == "C" and bench.facts["skipped_no_answer"] == 1
    assert bench.facts["json_repaired"] == "trailing commas removed"
    assert bench.records[0].problem == "How many bridges, ] are shown?"  # commas inside strings untouched
    assert bench.records[0].options[2] == "C. 3" and bench.categories == ["Counting Problem"]
    assert bench.records[0].extra["duration_group"] == "short" and bench.records[0].path == "901.mp4"
    with pytest.raises(RecordError, match="invalid JSON"):
        load_benchmark("video_mme", _write(tmp_path / "broken.json", '[{"video_id": "1" "questions": []}]'))


def test_grounding_sets_give_grounding_records_with_clipped_spans(tmp_path):
    anet = _write(tmp_path / "val_2.json", {"v_ABCDEFGHIJK": {
        "duration": 95.2, "timestamps": [[0.0, 12.4], [12.4, 99.0]],
        "sentences": [" A man ties his shoes.", " He runs along the beach."]}})
    bench = load_benchmark("activitynet_captions", anet)
    _all_valid(bench)
    assert bench.metric == "grounding" and bench.category_field is None and bench.categories == []
    assert [r.problem_type for r in bench] == ["grounding", "grounding"]
    assert bench.records[0].problem == "A man ties his shoes." and bench.facts["spans_clipped"] == 1
    assert (bench.records[1].segments[0].start, bench.records[1].segments[0].end) == (12.4, 95.2)
    sta = _write(tmp_path / "charades_sta_test.txt", "XYZ12 3.5 9.2##a person opens the fridge.\n"
                                                     "XYZ12 20.0 40.0##the person sits down.\n")
    bench = load_benchmark("charades_sta", sta, durations={"XYZ12": 30.0})
    _all_valid(bench)
    assert _golds(bench) == "00:03.5-00:09.200:20-00:30" and bench.facts["spans_clipped"] == 1
