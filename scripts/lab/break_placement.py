"""Break each wiring class of tag placement on purpose, one at a time, and record which tests fail.

    python scripts/lab/break_placement.py SCRATCH_CHECKOUT [NAME_PREFIX ...]

Run it on a scratch checkout (a git worktree): each break is written into its file, the placement
tests run there, and the file is restored. docs/design.md has the results of 2026-12-07.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STATE = "model/engine/placement/state.py"
PROCESSORS = "model/engine/placement/processors.py"
# Name: (file, the code as it is, the code broken).
BREAKS: dict[str, tuple[str, str, str]] = {
    "M1 token positions off by one": (STATE, "(positions == t).float()", "(positions == t + 1).float()"),
    "M2 unconditional half of the CFG batch": (
        PROCESSORS,
        "q_rows[-heads:], k[-1].transpose(-1, -2)",
        "q_rows[:heads], k[0].transpose(-1, -2)",
    ),
    "M2b unconditional half, diffusers-path layers": (
        PROCESSORS,
        "cond = slice(hidden_states.shape[0] // 2, None)",
        "cond = slice(0, max(1, hidden_states.shape[0] // 2))",
    ),
    "M3 maps swapped between references": (
        STATE,
        "maps = (self._acc / self._acc_layers).T.reshape(-1, h, w)",
        "maps = (self._acc / self._acc_layers).T.reshape(-1, h, w).flip(0)",
    ),
    "M4 masks only in the anchor block": (
        PROCESSORS,
        "probs = torch.softmax(scores, dim=-1) * weights",
        "probs = torch.softmax(scores, dim=-1) * (weights if self.anchor else float(self.scale[0]))",
    ),
    "M5 share attributed to another tag": (
        "model/engine/placement/report.py",
        "covers {shares[b.index]:.0%}",
        "covers {shares[tagged[(tagged.index(b) + 1) % len(tagged)].index]:.0%}",
    ),
    "M6 subject masks not exclusive": (
        "model/engine/placement/masks.py",
        "own = owner[None] == torch.arange(k, device=device)[:, None, None]  # [k, h, w]",
        "own = score >= config.threshold  # [k, h, w]",
    ),
    "M7 anchor block not the configured one": (
        PROCESSORS,
        "anchor=name.startswith(config.anchor_prefix)",
        'anchor=name.startswith("up_blocks.1.")',
    ),
    "M8 reports read the next step's masks": (
        STATE,
        "return {b.index: float(self.applied[k].mean()) for k, b in enumerate(self.bindings)}",
        "return {b.index: float(self.weights[k].mean()) for k, b in enumerate(self.bindings)}",
    ),
}
TESTS = ["tests/engine/test_placement_e2e.py", "tests/engine/test_placement.py", "tests/engine/test_placement_rule.py"]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    only = sys.argv[2:]
    results = {}
    for name, (path, code, broken) in BREAKS.items():
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        file = root / path
        source = file.read_text()
        if source.count(code) != 1:
            raise SystemExit(f"{name}: the code to break is not once in {path}")
        file.write_text(source.replace(code, broken))
        try:
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
            run = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=1500)
        finally:
            file.write_text(source)
        lines = run.stdout.splitlines()
        failed = [line.split(" ")[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
        results[name] = {"rc": run.returncode, "failed": failed, "summary": lines[-1:] or [""]}
        print(name, json.dumps(results[name]), flush=True)
    (root / "break_placement.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
