"""nginx in front of a Cog server without Docker: the shipped proxy config, run by a local nginx.

    GEN4_PROXY_TOKEN=secret python scripts/proxy.py [--listen 127.0.0.1:8080]
        [--upstream 127.0.0.1:5000] [--max-body 64m] [--timeout 900s] [--folder DIR]

deploy/nginx/gen4.conf.template is rendered as the official nginx image renders it (its
entrypoint substitutes the GEN4_PROXY_* variables and includes the result in its http block), then
wrapped in a main config whose pid file, logs and temporary files all live in one folder, so that
nginx runs without root (`nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`). The tests run it on
127.0.0.1 in front of the real coglet server; deploy/compose.yaml and deploy/kubernetes.yaml mount
the same template into the nginx image.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "gen4.conf.template"
# The proxy's settings and their defaults (deploy/compose.yaml and deploy/kubernetes.yaml set the
# same values; tests/packaging/test_deploy.py checks that they agree).
DEFAULTS = {
    "GEN4_PROXY_LISTEN": "8080",
    "GEN4_PROXY_UPSTREAM": "127.0.0.1:5000",
    "GEN4_PROXY_MAX_BODY": "64m",
    "GEN4_PROXY_TOKEN": "",
    "GEN4_PROXY_TIMEOUT": "900s",
}
# What the nginx image's entrypoint substitutes (NGINX_ENVSUBST_FILTER in compose and Kubernetes).
ENVSUBST_FILTER = "GEN4_PROXY_"
# A bearer token as RFC 6750 spells it (token68): nothing that could end the quoted map key.
TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]*=*$")


def nginx_binary() -> str | None:
    """The nginx executable (Debian puts it in /usr/sbin, not on every user's PATH)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def template_variables(template: str) -> set[str]:
    """The GEN4_PROXY_* variables a template uses."""
    return set(re.findall(r"\$\{?(" + ENVSUBST_FILTER + r"[A-Z_]+)\}?", template))


def render(template: str, values: dict[str, str]) -> str:
    """envsubst as the nginx image runs it: `$NAME` and `${NAME}` of each defined variable whose
    name contains the filter; any other `$...` (nginx's own variables) stays as written."""
    token = values.get("GEN4_PROXY_TOKEN", "")
    if not TOKEN_RE.match(token):
        raise ValueError("GEN4_PROXY_TOKEN may hold only letters, digits and -._~+/ (then = padding)")
    missing = sorted(template_variables(template) - set(values))
    if missing:
        raise ValueError(f"set {', '.join(missing)} (empty where unused): nginx refuses the config otherwise")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name] if ENVSUBST_FILTER in name and name in values else match.group(0)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", substitute, template)


def main_config(folder: Path, server_conf: Path) -> str:
    """A main nginx.conf around the rendered server block, with every path nginx writes in `folder`."""
    # As root, nginx's workers would run as nobody, who cannot write in a private temp folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} notice;\n"
        "events {\n    worker_connections 512;\n}\n"
        f"http {{\n    access_log {folder / 'access.log'};\n{temp}\n    include {server_conf};\n}}\n"
    )


class NginxProxy:
    """A real nginx with the shipped config in front of `upstream` (host:port), on 127.0.0.1."""

    def __init__(self, upstream: str, folder: Path, port: int | None = None, **settings: str) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        values = DEFAULTS | {"GEN4_PROXY_LISTEN": f"127.0.0.1:{port}", "GEN4_PROXY_UPSTREAM": upstream}
        values |= {f"GEN4_PROXY_{name.upper()}": value for name, value in settings.items()}
        server_conf = folder / "gen4.conf"
        server_conf.write_text(render(TEMPLATE.read_text(), values))
        self.config = folder / "nginx.conf"
        self.config.write_text(main_config(folder, server_conf))
        command = [binary, "-e", str(folder / "error.log"), "-p", str(folder), "-c", str(self.config)]
        checked = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx refused {server_conf}:\n{checked.stderr}{self.error_log()}")
        self.proc = subprocess.Popen([*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_listening()

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text() if path.exists() else ""

    def _wait_listening(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to listen on")
    parser.add_argument("--upstream", default=DEFAULTS["GEN4_PROXY_UPSTREAM"], help="the Cog server, host:port")
    parser.add_argument("--max-body", default=DEFAULTS["GEN4_PROXY_MAX_BODY"])
    parser.add_argument("--timeout", default=DEFAULTS["GEN4_PROXY_TIMEOUT"])
    parser.add_argument("--folder", type=Path, default=None, help="pid, logs and temp files (default: a temp folder)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    if host not in ("127.0.0.1", "localhost", ""):
        parser.error("--listen: this local runner listens on 127.0.0.1 only; use the nginx image to serve others")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="gen4-proxy-"))
    proxy = NginxProxy(
        args.upstream,
        folder,
        port=int(port),
        max_body=args.max_body,
        timeout=args.timeout,
        token=os.environ.get("GEN4_PROXY_TOKEN", ""),
    )
    print(f"nginx on {proxy.url} -> {args.upstream} (logs in {folder})", file=sys.stderr)
    try:
        sys.exit(proxy.proc.wait())
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
