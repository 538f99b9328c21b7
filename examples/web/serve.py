"""Serve the FlashLM web page on 127.0.0.1: static files only (the page, a model folder, onnxruntime-web and tokenizers.js);
the model runs in the browser.

    python examples/web/serve.py [--model EXPORT_DIR] [--port 8000]      # then open the printed URL

--port 0 picks a free port. The browser files come from clients/web/node_modules (make setup installs them).
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE = ROOT / "clients" / "web" / "node_modules"
PORTABLE_MODEL = ROOT / "models" / "flashlm-v10-fsp-onnx"  # the shipped model in plain ops (browsers run no contrib kernels)


PAGE_FILES = {"", "index.html", "app.mjs"}  # what "/" serves of this folder: the page, never its server's source


def routes(model_dir: Path) -> list[tuple[str, Path, set[str] | None]]:
    """URL prefix -> folder and the names it may serve (None: any file in it), longest prefix first."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model_files = {"manifest.json", *manifest.get("files", {})}
    return [("/vendor/ort/", NODE / "onnxruntime-web" / "dist", None),
            ("/vendor/tokenizers/", NODE / "@huggingface" / "tokenizers" / "dist", None),
            ("/model/", model_dir, model_files),
            ("/", HERE, PAGE_FILES)]


class Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream"}

    def __init__(self, *args, table, quiet, **kwargs):
        self.table, self.quiet = table, quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str | None:
        """The file a URL names, or None: outside its routed folder (.. or a symlink out of it), not one of the names
        the route serves, a dotfile, or a path no file system takes (a NUL byte)."""
        path = unquote(urlsplit(path).path)
        if "\x00" in path:
            return None
        for prefix, folder, allowed in self.table:
            if path.startswith(prefix):
                rel = path[len(prefix):]
                if (allowed is not None and rel not in allowed) or any(part.startswith(".") for part in rel.split("/")):
                    return None
                root = folder.resolve()
                target = (folder / (rel or "index.html")).resolve()
                return str(target) if root in target.parents and target.is_file() else None
        return None

    def send_head(self):
        if self.translate_path(self.path) is None:  # never a folder listing, never a file outside the routes
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def end_headers(self):
        # cross-origin isolation lets onnxruntime-web use threads (SharedArrayBuffer); no caching, so a re-export shows
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(PORTABLE_MODEL), help="export folder to serve, plain ops (default: the shipped model's)")
    ap.add_argument("--port", type=int, default=8000, help="0 = any free port")
    ap.add_argument("--quiet", action="store_true", help="no request log")
    args = ap.parse_args()
    model_dir = Path(args.model)
    if not (model_dir / "manifest.json").is_file():
        sys.exit(f"error: {model_dir} is not an export folder (no manifest.json); make one with flashlm-export")
    ops = json.loads((model_dir / "manifest.json").read_text()).get("ops", "plain")
    if ops != "plain":
        sys.exit(f"error: {model_dir} is a {ops}-ops export (onnxruntime's native fused kernels), which onnxruntime-web "
                 f"does not run; serve a plain export (flashlm-export --ops plain, the default), such as {PORTABLE_MODEL}")
    missing = [str(folder) for _, folder, _ in routes(model_dir)[:2] if not folder.is_dir()]
    if missing:
        sys.exit(f"error: the browser runtime files are missing ({', '.join(missing)}); run  make setup")
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), partial(Handler, table=routes(model_dir), quiet=args.quiet))
    except OSError as exc:
        sys.exit(f"error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); pick another --port")
    print(f"FlashLM web page: http://127.0.0.1:{server.server_address[1]}/  (model {model_dir}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
