"""lm-evaluation-harness (`lm-eval[api]==0.4.13`, model `local-completions`) scoring WikiText-2 test text through
the server: its log-likelihoods agree with the lab's own scoring of the same tokens. lm-eval lives in its own
environment (cache/peers/lm-eval, made on first use: its requirements would clash with the project's)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, api_server, needs_mirror

pytestmark = needs_mirror
LM = "smollm2-135m-instruct@fp"
LM_EVAL = "lm-eval[api]==0.4.13"
PREFIX_TOKEN = 0  # <|endoftext|>: what both sides put before each document
MAX_DOC_TOKENS = 400  # one scoring window per document (lm-eval's max_length is 512 here)


def lm_eval_python():
    venv = REPO / "cache" / "peers" / "lm-eval"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        import transformers

        subprocess.run([str(python), "-m", "pip", "install", "-q", LM_EVAL,
                        f"transformers=={transformers.__version__}"], check=True)
        stamp.write_text(LM_EVAL)
    return python


def wikitext_documents(tokenizer, count: int) -> list[str]:
    """The first `count` WikiText-2 test paragraphs short enough for one window each."""
    from core import data

    docs = []
    for paragraph in data.load_wikitext2_test().split("\n"):
        if len(paragraph.strip()) > 200 and len(tokenizer.encode(paragraph)) <= MAX_DOC_TOKENS:
            docs.append(paragraph)
        if len(docs) == count:
            break
    return docs


def lab_loglikelihoods(docs: list[str]) -> list[float]:
    """Each document's log-likelihood with the lab's own scoring (core.eval.quality, the perplexity
    evaluator's float32 log-probabilities), every token predicted, the prefix token first."""
    import mlx.core as mx

    from core.deploy.ids import load_deployed, parse_model_id
    from core.eval.quality import scored_logprobs

    deployed = load_deployed(*parse_model_id(LM))
    out = []
    for doc in docs:
        tokens = [PREFIX_TOKEN, *deployed.tokenizer.encode(doc)]
        logp = scored_logprobs(deployed.model, mx.array(tokens)[None], 0)[0]
        targets = mx.array(tokens[1:])
        out.append(float(mx.take_along_axis(logp, targets[:, None], axis=-1).sum()))
    return out


def test_lm_eval_harness_scores_wikitext_through_the_server_like_the_lab(tmp_path):
    from transformers import AutoTokenizer

    python = lm_eval_python()
    folder = REPO / "cache" / "models" / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    docs = wikitext_documents(tokenizer, 12)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mlxq_wikitext.yaml").write_text(
        "task: mlxq_wikitext\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    with api_server(["--models", LM], tmp_path) as url:
        args = (f"model={LM},base_url={url}/v1/completions,tokenizer={folder},tokenizer_backend=huggingface,"
                f"max_length=512,custom_prefix_token_id={PREFIX_TOKEN},num_concurrent=4,max_retries=1")
        run = subprocess.run([str(python), "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                              "--tasks", "mlxq_wikitext", "--include_path", str(tmp_path / "tasks"),
                              "--output_path", str(tmp_path / "out"), "--log_samples"],
                             capture_output=True, text=True, timeout=1200,
                             env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    (samples,) = (tmp_path / "out").rglob("samples_mlxq_wikitext_*.jsonl")
    by_doc = {}
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        by_doc[sample["doc"]["text"]] = float(np.ravel(sample["filtered_resps"])[0])
    theirs = [by_doc[d] for d in docs]
    ours = lab_loglikelihoods(docs)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    print(f"\nlm-eval word perplexity {np.exp(-sum(theirs) / words):.4f}, lab {np.exp(-sum(ours) / words):.4f}")
    assert abs(sum(theirs) / sum(ours) - 1) < 0.005
    assert np.allclose(theirs, ours, rtol=1e-3)  # each document, not only the total
