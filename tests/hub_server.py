"""A local HTTP server on 127.0.0.1 standing in for the Hugging Face Hub, for tests and benchmarks of the
real ``huggingface_hub`` client: repo info, the file tree and ``resolve`` downloads (HEAD and GET, with
``Range``, ``ETag`` and commit headers), a gated repo (401), missing repos (404), a byte count and a log
of the ranges asked for, so a test can tell how much weight data was served and whether a download
resumed, and a throttled mode (``rate``: bytes per second for each download)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # path -> bytes of file content sent
    ranges: list[tuple[str, int]] = field(default_factory=list)  # (path, first byte) of each GET of a file
    # path -> bytes sent by downloads (GETs of the whole file or of its rest, "bytes=N-"), header reads
    # (closed ranges such as "bytes=0-99999") not counted
    downloaded: dict[str, int] = field(default_factory=dict)
    rate: float | None = None  # bytes per second per download, None: as fast as it goes
    cut: dict[str, int] = field(
        default_factory=dict
    )  # path -> drop the connection after this many bytes, once

    def add(self, repo: str, folder: Path, gated: bool = False) -> str:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(
            repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()
        ).hexdigest()
        self.repos[repo] = Repo(files, commit, gated)
        return commit

    def start(self) -> tuple[ThreadingHTTPServer, str]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _json(self, obj: object, code: int = 200) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(code)
                self.send_header("X-Error-Code", {401: "GatedRepo", 404: "RepoNotFound"}.get(code, ""))
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, name: str, rev: str | None) -> Repo | None:
                repo = hub.repos.get(name)
                if repo is None:
                    self._error(404, f"Repository {name} not found")
                    return None
                if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
                    self._error(401, f"Access to model {name} is restricted")
                    return None
                if rev not in (None, "main", repo.commit):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RevisionNotFound")
                    self.send_header("X-Error-Message", f"Invalid rev id: {rev}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return repo

            def _serve(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    name, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
                    repo = self._repo(name, rev)
                    if repo is None:
                        return
                    if kind == "revision":
                        self._json(
                            {
                                "id": name,
                                "sha": repo.commit,
                                "private": False,
                                "gated": repo.gated,
                                "siblings": [{"rfilename": f} for f in repo.files],
                            }
                        )
                    else:
                        self._json(
                            [
                                {
                                    "type": "file",
                                    "oid": hashlib.sha1(data).hexdigest(),
                                    "size": len(data),
                                    "path": f,
                                }
                                for f, data in repo.files.items()
                            ]
                        )
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    name, rev, fname = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    repo = self._repo(name, rev)
                    if repo is None:
                        return
                    data = repo.files.get(fname)
                    if data is None:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start, end = 0, len(data)
                    rng = self.headers.get("Range")
                    download = True
                    if rng and rng.startswith("bytes="):
                        a, _dash, b = rng[6:].partition("-")
                        start, end = int(a or 0), (min(int(b) + 1, len(data)) if b else len(data))
                        download = not b
                    body = data[start:end]
                    self.send_response(206 if rng else 200)
                    self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                    self.send_header("X-Repo-Commit", repo.commit)
                    self.send_header("Content-Length", str(len(body)))
                    if rng:
                        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                    self.end_headers()
                    if not head:
                        key = f"{name}/{fname}"
                        hub.ranges.append((key, start))
                        step = len(body) if hub.rate is None else max(int(hub.rate / 50), 1)
                        stop = hub.cut.pop(key, None) if download else None
                        if stop is not None:
                            step = min(step, stop)
                        for at in range(0, len(body), step):
                            if stop is not None and at >= stop:
                                self.close_connection = True  # the rest never comes: a dropped connection
                                return
                            try:
                                self.wfile.write(body[at : at + step])
                            except OSError:  # the client went away (killed): what it got is counted
                                return
                            hub.served[key] = hub.served.get(key, 0) + len(body[at : at + step])
                            if download:
                                hub.downloaded[key] = hub.downloaded.get(key, 0) + len(body[at : at + step])
                            if hub.rate is not None:
                                time.sleep(step / hub.rate)
                    return
                self._error(404, f"no route {path}")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"
