"""Building Video-Thinker-10K (method.md §5): teacher-model stages with a hindsight check, resumable
and auditable. Entry point: `vt-curate` (`vt_data.curate.cli`, configs in conf/curate/).

Stages (each `(records, ctx) -> StageResult`, composed by conf/curate/curate.yaml, run in order):

    convert    sources.ConvertSources     source annotations -> records (vt_data.converters)
    quality    sources.QualityFilter      drop missing / corrupt videos and those under 64 frames
    questions  generate.WriteQuestions    caption-labelled videos -> one MC question each (4–6 options)
    captions   generate.WriteCaptions     QA-labelled records -> answer-conditioned segment captions
    traces     generate.SynthesizeTraces  <time>/<caption>/<think> traces from the ground truth
    hindsight  hindsight.HindsightCheck   checker must reach the gold letter; up to 3 regenerations
    balance    sampling.BalancedSample    balanced over sources and question types to a target size
    split      sampling.SplitTestTrain    1:9 test:train per source, by whole videos
    shard      output.WriteOutputs        <split>.jsonl and WebDataset shards

Models (`models`): every teacher and chat checker is a `ChatModel` (`openai_client.OpenAIChatClient`
for any OpenAI-compatible server, `rules.RuleBasedModel` for runs without a server); a `LocalChecker`
slot takes an in-process checker such as a vt-model model, named by `_target_` in config.

Cost and safety (`engine`, `cache`): every call is cached on disk by a hash of (stage, model, request,
settings) before its reply is used, so reruns pay for nothing twice; malformed replies are sent back
for a fix, then recorded as failures; counters and a progress bar per stage; a dry run prints requests
instead of sending them.

Audit: each sample keeps `extra["provenance"]` (see `pipeline`); `report.json`, `failures.jsonl` and
`rejected.jsonl` in the output directory; `vt-data stats` counts verdicts and per-stage outcomes.
"""

from vt_data.curate.cache import DiskCache, cache_key
from vt_data.curate.engine import CallEngine, CallResult, InvalidReply, extract_json
from vt_data.curate.models import (
    ChatError,
    ChatModel,
    ChatReply,
    CheckReply,
    CheckRequest,
    FatalChatError,
    LocalChecker,
    Usage,
)
from vt_data.curate.openai_client import OpenAIChatClient
from vt_data.curate.pipeline import Context, Failure, RunResult, StageResult, run_pipeline
from vt_data.curate.prompts import FixPrompt, PromptTemplate

__all__ = [
    "CallEngine", "CallResult", "ChatError", "ChatModel", "ChatReply", "CheckReply", "CheckRequest",
    "Context", "DiskCache", "Failure", "FatalChatError", "FixPrompt", "InvalidReply", "LocalChecker",
    "OpenAIChatClient", "PromptTemplate", "RunResult", "StageResult", "Usage", "cache_key", "extract_json",
    "run_pipeline",
]
