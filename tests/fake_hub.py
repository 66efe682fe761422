"""A Hugging Face hub on 127.0.0.1 for the hub tests: huggingface_hub itself downloads from it
(HF_ENDPOINT), so the cache the tests read is laid out by the library, with no network.

It answers what snapshot_download and hf_hub_download ask for: repo info at a revision,
the file tree of a commit, and file downloads (HEAD and GET on resolve URLs), with the
X-Error-Code headers the library turns into RepositoryNotFoundError, GatedRepoError and
RevisionNotFoundError. Every request is logged, so tests can tell what was fetched.
"""
import hashlib
import http.server
import json
import re
import threading
import urllib.parse

TOKEN = "hf_test_token"


class Repo:
    """A model repository: revision name -> commit, commit -> {file name: bytes}."""

    def __init__(self, gated=False):
        self.gated = gated
        self.refs = {}
        self.commits = {}

    def add_commit(self, files, *refs):
        commit = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items()))
                              .encode()).hexdigest()
        self.commits[commit] = dict(files)
        for ref in refs:
            self.refs[ref] = commit
        return commit


class FakeHub:
    def __init__(self):
        self.repos = {}
        self.requests = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def downloads(self):
        """File names fetched with GET on a resolve URL."""
        return [m.group(1) for method, path in self.requests if method == "GET"
                for m in [re.search(r"/resolve/[^/]+/(.+)$", path)] if m]

    def answer(self, handler, body):
        path = urllib.parse.urlparse(handler.path).path
        self.requests.append((handler.command, path))
        api = re.match(r"^/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?$", path)
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        match = api or resolve
        if not match:
            return self.error(handler, 404, "EntryNotFound", "no such endpoint")
        repo_id = urllib.parse.unquote(match.group(1))
        revision = urllib.parse.unquote(match.group(3) if api else match.group(2))
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.error(handler, 401, "RepoNotFound", "Repository Not Found")
        if repo.gated and handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.error(handler, 401, "GatedRepo", "Access to this model is restricted")
        commit = revision if revision in repo.commits else repo.refs.get(revision)
        if commit is None:
            return self.error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = repo.commits[commit]
        if api and api.group(2) == "revision":
            return self.json(handler, body, {
                "_id": commit, "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": [{"rfilename": name} for name in sorted(files)],
            })
        if api:
            return self.json(handler, body, [
                {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                for name, data in sorted(files.items())
            ])
        name = urllib.parse.unquote(resolve.group(3))
        if name not in files:
            return self.error(handler, 404, "EntryNotFound", f"{name} does not exist")
        data = files[name]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def json(handler, body, value):
        data = json.dumps(value).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def error(handler, status, code, message):
        data = json.dumps({"error": message}).encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
