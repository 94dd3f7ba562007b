"""VALIDATING: a job's dataset(s) through the base model's tokenizer and chat template, once,
before the job waits for a worker. The encoded examples are stored (training.example_store)
for every worker of the job to read; the job row gets a summary and moves to PENDING, or to
FAILED with a message naming the line and the limit.

    validate_job(session_factory, blobs, cache_dir, account_id, job_id)

Idempotent and safe to run twice (the controller may restart): blobs are overwritten with the
same bytes and the state change happens only if the job is still VALIDATING.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from fireplace.control.fine_tuning import runtime, states
from fireplace.control.fine_tuning.tables import SftJobRow
from fireplace.storage import BlobStore
from fireplace.training.encoding import ExampleEncoder
from fireplace.training.errors import TrainingError
from fireplace.training.example_store import ExampleSet, write_examples
from fireplace.training.model_files import local_model_dir
from fireplace.training.validation import carve_out, encode_dataset
from fireplace.training.hyperparams import from_spec

log = logging.getLogger("fireplace.training")


def _dataset_lines(session: Session, blobs: BlobStore, name: str):
    from fireplace.control.datasets.tables import READY, DatasetRow

    parts = name.split("/")
    row = session.get(DatasetRow, (parts[1], parts[3])) if len(parts) == 4 else None
    if row is None or row.state != READY or not row.blob_key:
        raise TrainingError(f"dataset {name!r} is missing or not READY")
    with blobs.open(row.blob_key) as f:
        return [line for line in f]


def _model_max_positions(model_dir: Path) -> int | None:
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = cfg.get("max_position_embeddings") or (cfg.get("text_config") or {}).get("max_position_embeddings")
    return int(value) if value else None


def _encode(factory: sessionmaker[Session], blobs: BlobStore, cache_dir: Path, row: SftJobRow) -> dict:
    from transformers import AutoTokenizer

    config = from_spec(row.spec)
    model_dir = local_model_dir(blobs, row.training_base_model, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"the base model {row.training_base_model!r} has no usable tokenizer: "
                            f"{str(exc)[:300]}") from None
    max_len = config.max_context_length
    warnings = []
    model_max = _model_max_positions(model_dir)
    if model_max and model_max < max_len:
        if row.spec.get("maxContextLength") not in (None, 8192):
            warnings.append(f"maxContextLength={max_len} is more than the base model's {model_max} positions; "
                            f"using {model_max}")
        max_len = model_max
    encoder = ExampleEncoder(tokenizer, chat_template=config.jinja_template, max_length=max_len)
    with factory() as s:
        train_lines = _dataset_lines(s, blobs, row.dataset)
        eval_lines = _dataset_lines(s, blobs, row.evaluation_dataset) if row.evaluation_dataset else None
    train = encode_dataset(train_lines, encoder, what="dataset")
    examples, eval_examples = train.examples, []
    if eval_lines is not None:
        eval_examples = encode_dataset(eval_lines, encoder, what="evaluation dataset").examples
    elif config.eval_auto_carveout:
        examples, eval_examples = carve_out(examples, config.seed)
    write_examples(blobs, row.account_id, row.job_id, "train", ExampleSet.from_examples(examples))
    if eval_examples:
        write_examples(blobs, row.account_id, row.job_id, "eval", ExampleSet.from_examples(eval_examples))
    else:
        blobs.delete(f"jobs/{row.account_id}/{row.job_id}/eval-examples.safetensors")
    if config.early_stop and not eval_examples:
        warnings.append("earlyStop has no effect without evaluationDataset or evalAutoCarveout")
    return {"examples": len(examples), "evalExamples": len(eval_examples),
            "tokens": sum(len(e.input_ids) for e in examples),
            "trainedTokens": sum(e.num_trained for e in examples), "truncated": train.truncated,
            "dropped": train.dropped, "longest": train.longest, "longestLine": train.longest_line,
            "firstTruncatedLine": train.first_truncated_line, "maxContextLength": max_len, "warnings": warnings}


def validate_job(factory: sessionmaker[Session], blobs: BlobStore, cache_dir: Path, account_id: str,
                 job_id: str) -> None:
    with factory() as s:
        row = s.get(SftJobRow, (account_id, job_id))
        if row is None or row.state != states.VALIDATING:
            return
        s.expunge(row)
    failure, summary = None, None
    try:
        summary = _encode(factory, blobs, Path(cache_dir), row)
    except TrainingError as exc:
        failure = (str(exc), "INVALID_ARGUMENT")
    except Exception as exc:  # a bug or an unreadable file: fail with what happened, never loop
        log.exception("validation of %s failed", job_id)
        failure = (f"validation failed: {type(exc).__name__}: {str(exc)[:500]}", "INTERNAL")
    with factory() as s:
        row = s.get(SftJobRow, (account_id, job_id), with_for_update=True)
        if row is None or row.state != states.VALIDATING:
            return
        if failure is not None:
            states.transition(row, states.FAILED, message=failure[0], code=failure[1])
            runtime.add_event(s, account_id, job_id, runtime.STATE, f"{states.FAILED}: {failure[0]}",
                              level=runtime.ERROR)
            s.commit()
            return
        row.validation = summary
        runtime.add_event(s, account_id, job_id, runtime.VALIDATION,
                          f"validated {summary['examples']} examples ({summary['tokens']} tokens, "
                          f"{summary['trainedTokens']} trained on) with {row.training_base_model}'s tokenizer and "
                          "chat template", data={k: v for k, v in summary.items() if k != "warnings"})
        if summary["truncated"]:
            runtime.add_event(s, account_id, job_id, runtime.VALIDATION,
                              f"{summary['truncated']} examples are longer than maxContextLength="
                              f"{summary['maxContextLength']} tokens and were truncated (first on line "
                              f"{summary['firstTruncatedLine']}; the longest, line {summary['longestLine']}, has "
                              f"{summary['longest']} tokens)", level=runtime.WARNING,
                              data={"truncated": summary["truncated"], "maxContextLength": summary["maxContextLength"]})
        if summary["dropped"]:
            runtime.add_event(s, account_id, job_id, runtime.VALIDATION,
                              f"{summary['dropped']} truncated examples had no assistant token left and are skipped",
                              level=runtime.WARNING, data={"dropped": summary["dropped"]})
        for warning in summary["warnings"]:
            runtime.add_event(s, account_id, job_id, runtime.VALIDATION, warning, level=runtime.WARNING)
        states.transition(row, states.PENDING, message="waiting for a training worker")
        runtime.add_event(s, account_id, job_id, runtime.STATE, states.PENDING)
        s.commit()
