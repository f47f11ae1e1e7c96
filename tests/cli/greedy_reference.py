#!/usr/bin/env python3
"""Checks greedy generation against PyTorch (tests/cli/test_generate.py): reads the newest
weights of a p2bw checkpoint (every stage file, global tensor names) into the float64 model of
tests/model/torch_reference.py and, for every generated position of TOKENS (the prompt's PROMPT
tokens first), computes the logits of the last seq_len tokens before it. Prints one line per
generated token: its position, the largest float64 logit and the token's own logit.
Usage: greedy_reference.py CHECKPOINT_FOLDER PROMPT TOKENS..."""
import pathlib
import sys

import h5py
import torch
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "model"))
from torch_reference import Model  # noqa: E402

folder = pathlib.Path(sys.argv[1])
prompt, tokens = int(sys.argv[2]), [int(t) for t in sys.argv[3:]]
with h5py.File(folder / "manifest.h5", "r") as manifest:
    deck = yaml.safe_load(manifest.attrs["deck"])
    stages = int(manifest.attrs["stage_files"])
weights = {}
for s in range(stages):
    with h5py.File(folder / f"stage_{s}.h5", "r") as f:
        f["params"].visititems(lambda name, item: weights.__setitem__(name, item[()].astype("float64"))
                               if isinstance(item, h5py.Dataset) else None)
m = deck["model"]
model = Model({"kind": m["kind"], "layers": m["layers"], "hidden": m["hidden"], "heads": m["heads"]}, weights)
T = int(m["seq_len"])
with torch.no_grad():
    for i in range(prompt, len(tokens)):
        context = torch.tensor([tokens[max(0, i - T):i]])
        logits, _ = model(context, torch.zeros_like(context))
        row = logits[0, -1, :int(m["vocab"])]
        print(i, float(row.max()), float(row[tokens[i]]))
