"""Start the real Cog HTTP server (coglet) for this model, and wait until it is READY.

    python scripts/serve.py [--port 5000] [--host 127.0.0.1] [--weights-dir weights]

The same as `COG_PREDICT_TYPE_STUB=predict.py:Predictor WEIGHTS_DIR=... python -m cog.server.http`
from the repository root, with the details that are easy to miss (harness/server.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.server import CogServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("WEIGHTS_DIR", ROOT / "weights")))
    parser.add_argument("--upload-url", default=None)
    args = parser.parse_args()
    server = CogServer(args.weights_dir, port=args.port, host=args.host, upload_url=args.upload_url)
    try:
        sys.exit(server.proc.wait())
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
