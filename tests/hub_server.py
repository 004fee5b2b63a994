"""A local, in-memory, Hub-compatible HTTP server for tests (standard library only).

What it is
----------
`LocalHubServer` serves the subset of the Hugging Face Hub HTTP API that `huggingface_hub`, `transformers` and
`datasets` use to create repositories, upload files (regular and Git LFS), commit, list and download. It runs in a
background thread of the test process, on 127.0.0.1 and a free port, and keeps everything in memory: repositories
with their commit history (each commit a full snapshot `path -> blob`), branches and tags, and one LFS object store
keyed by sha256. Object ids are computed the way git and the Hub compute them: regular files are identified by
their git blob sha1, LFS files by the sha256 of their content (and, in git trees, by the sha1 of their LFS pointer),
folders by their git tree sha1 and commits by a real git commit sha1.

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; ``{prefix}`` is empty, ``datasets/`` or ``spaces/``)
--------------------------------------------------------------------------------------------------------------------
- ``GET  /api/whoami-v2``: token check (401 without a valid ``Authorization: Bearer`` token).
- ``POST /api/repos/create``, ``DELETE /api/repos/delete``: 409 with ``{"url": ...}`` when the repo exists.
- ``POST /api/validate-yaml``: accepts every README (there is no YAML parser in the standard library).
- ``GET  /api/{type}/{repo_id}`` and ``/api/{type}/{repo_id}/revision/{revision}``: `model_info` / `dataset_info`
  (``sha``, ``siblings``, with sizes and LFS data when ``blobs=true``; no ``cardData``).
- ``GET  /api/{type}/{repo_id}/tree/{revision}[/{path}]``: ``recursive``, ``expand`` (``lastCommit`` only), cursor
  pagination through a ``Link: <...>; rel="next"`` header, like the Hub.
- ``POST /api/{type}/{repo_id}/paths-info/{revision}``, ``GET .../refs``, ``GET .../commits/{revision}``.
- ``POST /api/{type}/{repo_id}/preupload/{revision}``: "lfs" for paths matching a ``filter=lfs`` pattern of the
  repo's ``.gitattributes`` (new repos get a subset of the Hub's default one: ``*.safetensors``, ``*.parquet``,
  ``*.bin``, ...), for files of at least `lfs_threshold` bytes, and for binary samples (a NUL byte); else "regular".
- ``POST /api/{type}/{repo_id}/commit/{revision}``: the NDJSON commit (``header``, ``file``, ``lfsFile``,
  ``deletedFile``, ``deletedFolder``), ``parentCommit`` checked (412), answers ``commitOid`` / ``commitUrl``.
- ``POST|DELETE /api/{type}/{repo_id}/branch/{branch}``, ``POST /api/{type}/{repo_id}/tag/{revision}``,
  ``DELETE /api/{type}/{repo_id}/tag/{tag}``.
- ``POST /{prefix}{repo_id}.git/info/lfs/objects/batch``: basic transfer only; objects already stored get no
  ``actions``; others get an ``upload`` action (a pre-signed-like ``PUT /lfs-upload/{oid}?ticket=...`` on this server,
  which checks size and sha256) and a ``verify`` action (``POST /{prefix}{repo_id}.git/info/lfs/objects/verify``).
- ``HEAD|GET /{prefix}{repo_id}/resolve/{revision}/{path}``: ``ETag`` (git blob sha1, or sha256 for LFS files, which
  also get ``X-Linked-Etag`` / ``X-Linked-Size``), ``X-Repo-Commit``, ``Content-Length``, single ``Range`` (206/416),
  errors with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` like the Hub. No redirects.
- ``GET /api/agent-harnesses`` and ``/api/telemetry/...``: harmless answers to background calls of the clients.

What it does not do
-------------------
No Xet storage (clients must run with ``HF_HUB_DISABLE_XET=1``, or they would upload through Xet), no multipart
LFS (the batch answer never carries a ``chunk_size``), no pull requests (``create_pr`` is refused with 400), no
gated repos, no ``.gitignore`` handling in preupload, no ``cardData`` (README front matter is not parsed), no
dataset viewer, no Spaces runtime, no buckets, no web pages. Anything else answers 404 and is recorded in
`LocalHubServer.unhandled_requests`, so a test can see what a client tried to reach.

How to use it in a test
-----------------------
`huggingface_hub` (and `datasets`) read ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET`` and the cache
paths once, at import, into module constants (``huggingface_hub.constants.ENDPOINT``,
``HUGGINGFACE_CO_URL_TEMPLATE``, ``utils._http._HUB_ORIGINS``, ``datasets.config.HF_ENDPOINT``, ...), and the test
suite imports them offline (tests/conftest.py sets ``HF_HUB_OFFLINE=1``). So the clients run in a fresh interpreter
whose environment points at the server, and the server stays in the test process, where the test can inspect it and
inject failures::

    from hub_server import LocalHubServer, run_hub_client

    def test_upload(tmp_path):
        with LocalHubServer() as hub:
            env = hub.client_env(tmp_path / "hf_home")  # HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE=0, ...
            run_hub_client(
                '''
                from huggingface_hub import HfApi
                HfApi().create_repo("user/demo")
                HfApi().upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="user/demo")
                ''',
                env,
            )
            assert hub.repo_files("user/demo")["a.txt"] == b"hello"

`hub.fail_next("commit", times=1, status=500)` makes the next commit fail. Note huggingface_hub retries most calls
on 408/429/500/502/503/504 answers (preupload, LFS batch, LFS upload and verify, tree pages, and downloads once the
cache cannot serve them: 5 retries, after 1, 2, 4, 8 and 8 s), but not commits. So fail a commit to test a clean
error, fail an LFS upload once to test a retry, and fail it with a status the client does not retry (e.g. 507) to
test an upload error without waiting 23 s.
"""

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import parse_qs, unquote, urlencode

logger = logging.getLogger(__name__)

# Names of the endpoints, for `LocalHubServer.fail_next` and the request log.
Endpoint = Literal[
    "whoami",
    "create-repo",
    "delete-repo",
    "validate-yaml",
    "repo-info",
    "tree",
    "paths-info",
    "refs",
    "commits",
    "preupload",
    "commit",
    "branch",
    "tag",
    "lfs-batch",
    "lfs-upload",
    "lfs-verify",
    "resolve",
    "agent-harnesses",
    "telemetry",
]
ENDPOINTS: frozenset[str] = frozenset(get_args(Endpoint))

RepoType = Literal["model", "dataset", "space"]
_TYPE_FROM_PLURAL: dict[str, RepoType] = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# The Hub's own threshold: files of 10 MiB or more are stored with LFS whatever their name.
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
# The Hub's tree endpoint answers at most 1000 entries per page.
DEFAULT_TREE_PAGE_SIZE = 1000

# A subset of the .gitattributes the Hub writes in the first commit of every repo: it is what makes `*.safetensors`
# or `*.parquet` LFS files even when they are small.
_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx"
    " *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar *.tflite *.tgz"
    " *.wasm *.xz *.zip *.zst *tfevents*"
).split()
_DATASET_LFS_PATTERNS = "*.lz4 *.mds *.mp3 *.ogg *.wav *.jpg *.jpeg *.png *.webp".split()

# Environment variables of the test process that must not reach a client (they would send it offline, elsewhere,
# through a proxy, or to a user's real token and caches).
_CLIENT_ENV_DROP = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_DATASETS_CACHE",
    "HF_MODULES_CACHE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


# ---------------------------------------------------------------------------------------------------------------------
# Git object ids


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of `content`: what the Hub calls the oid (and ETag) of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_object_oid(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


@dataclass(frozen=True)
class _Blob:
    """One file version. Regular files carry their bytes; LFS files point into the server's LFS store."""

    oid: str  # git blob sha1 of the content, or of the LFS pointer for LFS files
    size: int  # size of the real content
    content: bytes | None = None  # regular files only
    sha256: str | None = None  # LFS files only
    pointer_size: int | None = None  # LFS files only

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        # The Hub's ETag is the git sha1 for regular files and the sha256 for LFS files.
        return self.sha256 if self.sha256 is not None else self.oid

    @classmethod
    def regular(cls, content: bytes) -> "_Blob":
        return cls(oid=git_blob_oid(content), size=len(content), content=content)

    @classmethod
    def lfs(cls, sha256: str, size: int) -> "_Blob":
        pointer = lfs_pointer(sha256, size)
        return cls(oid=git_blob_oid(pointer), size=size, sha256=sha256, pointer_size=len(pointer))


def _tree_oids(files: Mapping[str, _Blob]) -> dict[str, str]:
    """Git tree sha1 of every folder of a snapshot ("" is the root), as git would compute them."""
    children: dict[str, dict[str, tuple[bool, str]]] = {"": {}}  # folder -> name -> (is_folder, path)
    for path in files:
        parts = path.split("/")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            child = "/".join(parts[: depth + 1])
            children.setdefault(parent, {})[parts[depth]] = (depth < len(parts) - 1, child)
    oids: dict[str, str] = {}

    def compute(folder: str) -> str:
        entries = []
        for name, (is_folder, path) in children[folder].items():
            oid = compute(path) if is_folder else files[path].oid
            # git sorts tree entries by name, comparing a folder as if its name ended with "/"
            entries.append(
                ((name + "/" if is_folder else name).encode(), "40000" if is_folder else "100644", name, oid)
            )
        body = b"".join(
            f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid) for _, mode, name, oid in sorted(entries)
        )
        oids[folder] = _git_object_oid("tree", body)
        return oids[folder]

    compute("")
    return oids


def _hub_date(moment: datetime) -> str:
    """The Hub's date format, which `huggingface_hub.utils.parse_datetime` expects."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class HubUser:
    """An account of the local Hub, authenticated by `token`; it can write to its own namespace and its `orgs`."""

    name: str
    token: str
    orgs: tuple[str, ...] = ()

    def can_write(self, namespace: str) -> bool:
        return namespace == self.name or namespace in self.orgs


DEFAULT_USER = HubUser(name="user", token="hf_local_hub_server_token")


@dataclass(frozen=True)
class _Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: datetime
    files: Mapping[str, _Blob]  # the full snapshot, path -> blob
    tree_oids: Mapping[str, str]  # folder -> git tree sha1


@dataclass
class _Repo:
    repo_type: RepoType
    repo_id: str
    private: bool
    created_at: datetime
    uid: str = field(default_factory=lambda: secrets.token_hex(12))
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)  # name -> commit oid

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered, for tests that check what a client did."""

    method: str
    path: str  # without the query string
    endpoint: str | None  # None when no route matched
    status: int


@dataclass
class _Failure:
    times: int
    status: int
    message: str | None


class HubError(Exception):
    """An error answer: raised by the handlers, turned into a Hub-style error response by the dispatcher."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


@dataclass
class _Request:
    method: str  # HEAD is routed like GET
    path: str  # raw (still quoted) path, without the query string
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    user: HubUser | None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> "_Response":
        return cls(
            status,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
        )


def _split_revision(parts: Sequence[str]) -> tuple[str, list[str]]:
    """Splits quoted path segments into (revision, rest).

    Clients quote the revision with `safe=""` ("refs%2Fpr%2F1"), but some keep the special refs "refs/pr/N" and
    "refs/convert/..." unquoted, so a leading "refs" segment takes the next two along.
    """
    if not parts:
        raise HubError(400, "Missing revision in the URL")
    if unquote(parts[0]) == "refs" and len(parts) >= 3:
        return "/".join(unquote(part) for part in parts[:3]), list(parts[3:])
    return unquote(parts[0]), list(parts[1:])


def _clean_path(path: str) -> str:
    """Validates a path in a repo, as the Hub does before it touches git."""
    path = path.lstrip("/")
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _gitattributes_lfs_patterns(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line.strip() and "filter=lfs" in line.split()[1:]]


def _matches_gitattributes(pattern: str, path: str) -> bool:
    """Approximate gitattributes matching: a pattern without "/" matches the file name, one with "/" the path."""
    if "/" in pattern.rstrip("/"):
        return fnmatchcase(path, pattern.lstrip("/"))
    return fnmatchcase(path.rsplit("/", 1)[-1], pattern)


# ---------------------------------------------------------------------------------------------------------------------
# The server


class LocalHubServer:
    """An in-memory Hub on 127.0.0.1 (see the module docstring): start/stop it, or use it as a context manager.

    Args:
        users: The accounts; the first one is the default (`token`, `user`, `client_env`). Defaults to
            `DEFAULT_USER` ("user", token "hf_local_hub_server_token").
        lfs_threshold: Files of at least this many bytes are uploaded with LFS (the Hub: 10 MiB).
        tree_page_size: Entries per page of the tree endpoint (the Hub: 1000); lower it to test pagination.
        host: The interface to listen on.
    """

    def __init__(
        self,
        users: Sequence[HubUser] = (DEFAULT_USER,),
        *,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        tree_page_size: int = DEFAULT_TREE_PAGE_SIZE,
        host: str = "127.0.0.1",
    ) -> None:
        if not users:
            raise ValueError("LocalHubServer needs at least one user")
        self.users = tuple(users)
        self.lfs_threshold = lfs_threshold
        self.tree_page_size = tree_page_size
        self.host = host
        # Every request is handled under this lock: handlers only touch memory and are fast, and it makes each
        # commit atomic with respect to concurrent reads, as on the Hub.
        self._lock = threading.RLock()
        self._repos: dict[tuple[RepoType, str], _Repo] = {}
        self._lfs: dict[str, bytes] = {}  # sha256 -> content
        self._upload_tickets: dict[str, tuple[str, int]] = {}  # ticket -> (sha256, size) of an announced upload
        self._failures: dict[str, _Failure] = {}
        self.requests: list[RequestRecord] = []
        self.unhandled_requests: list[str] = []  # "METHOD /path" of requests that matched no route
        self.internal_errors: list[str] = []  # tracebacks of handler bugs (answered 500)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> "LocalHubServer":
        """Binds a free port and serves in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("LocalHubServer is already started")
        httpd = _HTTPServer(self, (self.host, 0))
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHubServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket (the state stays readable)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint, e.g. "http://127.0.0.1:40123" (what HF_ENDPOINT must be)."""
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token(self) -> str:
        """The default user's token."""
        return self.users[0].token

    @property
    def user(self) -> str:
        """The default user's name: the namespace its token can write to."""
        return self.users[0].name

    def client_env(
        self,
        hf_home: str | os.PathLike[str],
        *,
        token: str | None = None,
        anonymous: bool = False,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment of a client process that talks to this server.

        It points `HF_ENDPOINT` here, turns offline mode off, disables Xet, telemetry and progress bars, puts every
        Hugging Face cache under `hf_home`, sets `HF_TOKEN` and drops proxies and the test process's own Hub
        settings (offline flags, tokens, cache paths).

        Args:
            hf_home: The client's HF_HOME (its caches and token file live there).
            token: The client's HF_TOKEN; defaults to the default user's token.
            anonymous: No HF_TOKEN at all (and no token file in the fresh `hf_home`): an anonymous client.
            base: The environment to start from; defaults to `os.environ`.
        """
        home = Path(hf_home)
        env = {key: value for key, value in (os.environ if base is None else base).items()}
        for key in _CLIENT_ENV_DROP:
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",  # huggingface_hub would upload and download through Xet, which we do not speak
            HF_HOME=str(home),
            HF_HUB_CACHE=str(home / "hub"),
            HF_DATASETS_CACHE=str(home / "datasets"),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_DISABLE_SYMLINKS_WARNING="1",
            HF_HUB_DISABLE_EXPERIMENTAL_WARNING="1",
            HF_UPDATE_DOWNLOAD_COUNTS="0",  # datasets would ping S3 on every load_dataset
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        if not anonymous:
            env["HF_TOKEN"] = token if token is not None else self.token
        return env

    # -- test controls and inspection ---------------------------------------------------------------------------------

    def fail_next(self, endpoint: Endpoint, times: int = 1, status: int = 500, message: str | None = None) -> None:
        """Makes the next `times` requests to `endpoint` answer `status` with a Hub-style error.

        The request body is read first, so the connection stays usable, and nothing is stored.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"Unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)}")
        with self._lock:
            self._failures[endpoint] = _Failure(times=times, status=status, message=message)

    def add_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        repo_type: RepoType = "model",
        branch: str = "main",
        message: str = "Add files",
        private: bool = False,
    ) -> str:
        """Commits `files` server-side (no client involved), creating the repo if needed; returns the commit oid.

        Files are stored regular or LFS by the same rules as the preupload endpoint.
        """
        with self._lock:
            repo = self._repos.get((repo_type, repo_id)) or self._create_repo(repo_type, repo_id, private, self.user)
            head = repo.commits[repo.branches[branch]]
            snapshot = dict(head.files)
            for path, content in files.items():
                path = _clean_path(path)
                if self._lfs_mode(repo, head, path, len(content), content[:512]):
                    sha256 = hashlib.sha256(content).hexdigest()
                    self._lfs[sha256] = content
                    snapshot[path] = _Blob.lfs(sha256, len(content))
                else:
                    snapshot[path] = _Blob.regular(content)
            return self._commit(repo, branch, snapshot, message, "", self.user).oid

    def repo_files(self, repo_id: str, repo_type: RepoType = "model", revision: str = "main") -> dict[str, bytes]:
        """The content of every file of a repo at `revision` (LFS files resolved from the LFS store)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.commits[self._resolve_revision(repo, revision)]
            return {path: self._content(blob) for path, blob in commit.files.items()}

    def lfs_files(self, repo_id: str, repo_type: RepoType = "model", revision: str = "main") -> set[str]:
        """The paths stored with LFS in a repo at `revision`."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.commits[self._resolve_revision(repo, revision)]
            return {path for path, blob in commit.files.items() if blob.is_lfs}

    def commit_titles(self, repo_id: str, repo_type: RepoType = "model", branch: str = "main") -> list[str]:
        """Titles of the commits of `branch`, newest first."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return [commit.title for commit in self._history(repo, repo.branches[branch])]

    def has_repo(self, repo_id: str, repo_type: RepoType = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    @property
    def lfs_objects(self) -> dict[str, int]:
        """The LFS store: sha256 -> size."""
        with self._lock:
            return {sha256: len(content) for sha256, content in self._lfs.items()}

    def requests_to(self, endpoint: Endpoint) -> list[RequestRecord]:
        """The answered requests of one endpoint, oldest first."""
        with self._lock:
            return [record for record in self.requests if record.endpoint == endpoint]

    # -- dispatch -----------------------------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Response:
        """Answers one request (HTTP-free, so the routing can be reasoned about, and called, on its own)."""
        path, _, raw_query = raw_path.partition("?")
        endpoint: str | None = None
        try:
            with self._lock:
                request = _Request(
                    method="GET" if method == "HEAD" else method,
                    path=path,
                    query=parse_qs(raw_query, keep_blank_values=True),
                    headers=headers,
                    body=body,
                    user=None,
                )
                endpoint, handler = self._route(request)
                if endpoint != "lfs-upload":  # pre-signed: the client sends no token there
                    request.user = self._authenticate(headers)
                failure = self._failures.get(endpoint)
                if failure is not None and failure.times > 0:
                    failure.times -= 1
                    raise HubError(
                        failure.status,
                        failure.message
                        or f"Injected failure: {endpoint} answered {failure.status} (LocalHubServer.fail_next)",
                    )
                response = handler()
        except HubError as err:
            response = self._error_response(err)
        except Exception:  # a bug of the server: answer 500 and keep the traceback for the test to report
            trace = traceback.format_exc()
            logger.error("LocalHubServer failed on %s %s\n%s", method, raw_path, trace)
            with self._lock:
                self.internal_errors.append(f"{method} {raw_path}\n{trace}")
            response = self._error_response(HubError(500, "LocalHubServer internal error (see internal_errors)"))
        with self._lock:
            self.requests.append(RequestRecord(method, path, endpoint, response.status))
            if endpoint is None:
                self.unhandled_requests.append(f"{method} {path}")
        return response

    @staticmethod
    def _error_response(err: HubError) -> _Response:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        return _Response.json({"error": err.message}, status=err.status, headers=headers)

    def _authenticate(self, headers: Mapping[str, str]) -> HubUser | None:
        authorization = headers.get("authorization")
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        for user in self.users:
            if scheme.lower() == "bearer" and token.strip() == user.token:
                return user
        # The Hub rejects an unknown token on every endpoint, even on public resources.
        raise HubError(401, "Invalid credentials in Authorization header")

    def _route(self, req: _Request) -> tuple[Endpoint, Callable[[], _Response]]:
        """Maps a request to (endpoint name, handler); raises a 404 HubError (endpoint None) when nothing matches."""
        segments = req.path.split("/")[1:]
        if segments and segments[-1] == "":
            segments.pop()
        method = req.method
        if segments[:1] == ["api"]:
            api = segments[1:]
            if api == ["whoami-v2"] and method == "GET":
                return "whoami", partial(self._whoami, req)
            if api == ["repos", "create"] and method == "POST":
                return "create-repo", partial(self._create_repo_endpoint, req)
            if api == ["repos", "delete"] and method == "DELETE":
                return "delete-repo", partial(self._delete_repo_endpoint, req)
            if api == ["validate-yaml"] and method == "POST":
                return "validate-yaml", lambda: _Response.json({"errors": [], "warnings": []})
            if api == ["agent-harnesses"] and method == "GET":
                return "agent-harnesses", lambda: _Response.json({"standardEnvVars": [], "harnesses": {}})
            if api[:1] == ["telemetry"]:
                return "telemetry", lambda: _Response.json({})
            if len(api) >= 3 and api[0] in _TYPE_FROM_PLURAL:
                repo_type = _TYPE_FROM_PLURAL[api[0]]
                repo_id = f"{unquote(api[1])}/{unquote(api[2])}"
                action, rest = (api[3], api[4:]) if len(api) > 3 else (None, [])
                routed = self._route_repo_api(req, repo_type, repo_id, action, rest)
                if routed is not None:
                    return routed
        elif segments[:1] == ["lfs-upload"] and len(segments) == 2 and method == "PUT":
            return "lfs-upload", partial(self._lfs_upload, req, unquote(segments[1]))
        else:
            repo_type: RepoType = "model"
            if segments[:1] and segments[0] in ("datasets", "spaces"):
                repo_type = _TYPE_FROM_PLURAL[segments[0]]
                segments = segments[1:]
            if len(segments) >= 3:
                namespace, name, rest = unquote(segments[0]), unquote(segments[1]), segments[2:]
                if name.endswith(".git") and rest[:3] == ["info", "lfs", "objects"] and method == "POST":
                    repo_id = f"{namespace}/{name[: -len('.git')]}"
                    if rest[3:] == ["batch"]:
                        return "lfs-batch", partial(self._lfs_batch, req, repo_type, repo_id)
                    if rest[3:] == ["verify"]:
                        return "lfs-verify", partial(self._lfs_verify, req, repo_type, repo_id)
                if rest[0] == "resolve" and method == "GET":
                    revision, file_parts = _split_revision(rest[1:])
                    filename = unquote("/".join(file_parts))
                    return "resolve", partial(self._resolve, req, repo_type, f"{namespace}/{name}", revision, filename)
        raise HubError(404, f"LocalHubServer: no route for {req.method} {req.path}")

    def _route_repo_api(
        self, req: _Request, repo_type: RepoType, repo_id: str, action: str | None, rest: list[str]
    ) -> tuple[Endpoint, Callable[[], _Response]] | None:
        method = req.method
        if action is None and method == "GET":
            return "repo-info", partial(self._repo_info, req, repo_type, repo_id, None)
        if action == "revision" and method == "GET" and rest:
            revision, _ = _split_revision(rest)
            return "repo-info", partial(self._repo_info, req, repo_type, repo_id, revision)
        if action == "tree" and method == "GET" and rest:
            revision, path_parts = _split_revision(rest)
            path = unquote("/".join(path_parts))
            return "tree", partial(self._tree, req, repo_type, repo_id, revision, path)
        if action == "refs" and method == "GET":
            return "refs", partial(self._refs, req, repo_type, repo_id)
        if action == "branch" and rest and method in ("POST", "DELETE"):
            return "branch", partial(self._branch, req, repo_type, repo_id, unquote("/".join(rest)))
        if action == "tag" and rest and method in ("POST", "DELETE"):
            return "tag", partial(self._tag, req, repo_type, repo_id, unquote("/".join(rest)))
        handlers: dict[tuple[str, str], tuple[Endpoint, Callable[..., _Response]]] = {
            ("paths-info", "POST"): ("paths-info", self._paths_info),
            ("commits", "GET"): ("commits", self._commits),
            ("preupload", "POST"): ("preupload", self._preupload),
            ("commit", "POST"): ("commit", self._commit_endpoint),
        }
        if action is not None and (action, method) in handlers and rest:
            endpoint, handler = handlers[(action, method)]
            revision, _ = _split_revision(rest)
            return endpoint, partial(handler, req, repo_type, repo_id, revision)
        return None

    # -- repos, access and revisions ----------------------------------------------------------------------------------

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _get_repo(self, req: _Request, repo_type: RepoType, repo_id: str, write: bool = False) -> _Repo:
        """The repo, if the request may read it (or write to it); else the Hub's answers."""
        repo = self._repos.get((repo_type, repo_id))
        readable = repo is not None and (
            not repo.private or (req.user is not None and req.user.can_write(repo.namespace))
        )
        if repo is None or not readable:
            # Like the Hub: 401 to anonymous requests and 404 to authenticated ones, so private repos do not leak.
            status = 401 if req.user is None else 404
            raise HubError(status, "Repository not found", code="RepoNotFound")
        if write:
            if req.user is None:
                raise HubError(401, "You must be authenticated to write to a repository")
            if not req.user.can_write(repo.namespace):
                raise HubError(403, f"You don't have the rights to write to {repo_type} {repo_id}")
        return repo

    def _resolve_revision(self, repo: _Repo, revision: str | None) -> str:
        """Branch, tag, full or abbreviated (7+) commit id -> commit oid."""
        revision = revision or "main"
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.tags:
            return repo.tags[revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def _create_repo(self, repo_type: RepoType, repo_id: str, private: bool, author: str) -> _Repo:
        """A new repo whose first commit holds the Hub's default .gitattributes."""
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=datetime.now(timezone.utc))
        patterns = _LFS_PATTERNS + (_DATASET_LFS_PATTERNS if repo_type == "dataset" else [])
        gitattributes = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in patterns)
        self._repos[(repo_type, repo_id)] = repo
        self._commit(
            repo, "main", {".gitattributes": _Blob.regular(gitattributes.encode())}, "initial commit", "", author
        )
        return repo

    def _commit(
        self, repo: _Repo, branch: str, files: Mapping[str, _Blob], title: str, description: str, author: str
    ) -> _Commit:
        """Records a snapshot as a new commit on `branch` (created if missing)."""
        parent = repo.branches.get(branch)
        tree_oids = _tree_oids(files)
        date = datetime.now(timezone.utc)
        message = title + (f"\n\n{description}" if description else "")
        identity = f"{author} <{author}@users.noreply.localhost> {int(date.timestamp())} +0000"
        body = f"tree {tree_oids['']}\n" + (f"parent {parent}\n" if parent else "")
        body += f"author {identity}\ncommitter {identity}\n\n{message}\n"
        oid = _git_object_oid("commit", body.encode())
        commit = _Commit(oid, parent, title, message, author, date, dict(files), tree_oids)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def _history(self, repo: _Repo, oid: str) -> Iterator[_Commit]:
        commit: _Commit | None = repo.commits[oid]
        while commit is not None:
            yield commit
            commit = repo.commits[commit.parent] if commit.parent else None

    def _content(self, blob: _Blob) -> bytes:
        if blob.content is not None:
            return blob.content
        assert blob.sha256 is not None
        return self._lfs[blob.sha256]

    def _lfs_mode(self, repo: _Repo, head: _Commit, path: str, size: int, sample: bytes) -> bool:
        """Whether the Hub would store this file with LFS (see the module docstring)."""
        if size == 0:
            return False  # the clients upload empty files as regular ones anyway
        gitattributes = head.files.get(".gitattributes")
        patterns = (
            _gitattributes_lfs_patterns(self._content(gitattributes).decode("utf-8", "replace"))
            if gitattributes
            else []
        )
        return (
            any(_matches_gitattributes(pattern, path) for pattern in patterns)
            or size >= self.lfs_threshold
            or b"\0" in sample
        )

    # -- account and repo endpoints -----------------------------------------------------------------------------------

    def _whoami(self, req: _Request) -> _Response:
        if req.user is None:
            raise HubError(401, "Invalid username or password.")
        user = req.user
        return _Response.json(
            {
                "type": "user",
                "id": hashlib.sha1(user.name.encode()).hexdigest()[:24],
                "name": user.name,
                "fullname": user.name,
                "email": f"{user.name}@users.noreply.localhost",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "write"} for org in user.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def _create_repo_endpoint(self, req: _Request) -> _Response:
        if req.user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        payload = req.json() or {}
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo name or type: {name!r} ({repo_type!r})")
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, "Spaces need an sdk")
        namespace = organization or req.user.name
        if not req.user.can_write(namespace):
            raise HubError(403, f"You don't have the rights to create a repo under the namespace {namespace!r}")
        repo_id = f"{namespace}/{name}"
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            # `create_repo(exist_ok=True)` reads the url of this 409 answer.
            return _Response.json(
                {"error": f"You already created this {repo_type} repo", "url": self._repo_url(existing)}, status=409
            )
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        repo = self._create_repo(repo_type, repo_id, private, req.user.name)
        return _Response.json({"url": self._repo_url(repo), "name": repo_id, "id": repo.uid})

    def _delete_repo_endpoint(self, req: _Request) -> _Response:
        payload = req.json() or {}
        namespace = payload.get("organization") or (req.user.name if req.user else "")
        repo_type = payload.get("type") or "model"
        repo = self._get_repo(req, repo_type, f"{namespace}/{payload.get('name')}", write=True)
        del self._repos[(repo.repo_type, repo.repo_id)]
        return _Response()

    def _repo_info(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str | None) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = repo.commits[self._resolve_revision(repo, revision)]
        blobs = req.flag("blobs")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.is_lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": blob.pointer_size}
            siblings.append(sibling)
        return _Response.json(
            {
                "_id": repo.uid,
                "id": repo.repo_id,
                "author": repo.namespace,
                "sha": commit.oid,
                "createdAt": _hub_date(repo.created_at),
                "lastModified": _hub_date(commit.date),
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(blob.size for blob in commit.files.values()),
                **({"spaces": []} if repo_type == "model" else {}),
                **({"description": "", "citation": ""} if repo_type == "dataset" else {}),
            }
        )

    def _refs(self, req: _Request, repo_type: RepoType, repo_id: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id)

        def refs(names: Mapping[str, str], kind: str) -> list[dict[str, str]]:
            return [{"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid} for name, oid in names.items()]

        return _Response.json(
            {
                "branches": refs(repo.branches, "heads"),
                "converts": [],
                "tags": refs(repo.tags, "tags"),
                "pullRequests": [],
            }
        )

    def _commits(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id)
        return _Response.json(
            [
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": commit.author}],
                    "date": _hub_date(commit.date),
                }
                for commit in self._history(repo, self._resolve_revision(repo, revision))
            ]
        )

    def _branch(self, req: _Request, repo_type: RepoType, repo_id: str, branch: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        if req.method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise HubError(404 if branch not in repo.branches else 403, f"Cannot delete branch {branch!r}")
            del repo.branches[branch]
            return _Response()
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        starting_point = (req.json() or {}).get("startingPoint")
        repo.branches[branch] = self._resolve_revision(repo, starting_point)
        return _Response()

    def _tag(self, req: _Request, repo_type: RepoType, repo_id: str, name: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        if req.method == "DELETE":  # DELETE /tag/{tag}
            if repo.tags.pop(name, None) is None:
                raise HubError(404, f"Tag {name!r} not found", code="RevisionNotFound")
            return _Response()
        tag = (req.json() or {}).get("tag")  # POST /tag/{revision} {"tag": ...}
        if not isinstance(tag, str) or not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Tag already exists: {tag}")
        repo.tags[tag] = self._resolve_revision(repo, name)
        return _Response()

    # -- listing ------------------------------------------------------------------------------------------------------

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str, is_folder: bool) -> dict[str, str]:
        """The newest commit of the history of `commit` that changed `path` (the Hub's `lastCommit`)."""

        def version(snapshot: _Commit) -> str | None:
            if is_folder:
                return snapshot.tree_oids.get(path)
            blob = snapshot.files.get(path)
            return blob.oid if blob else None

        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if version(parent) != version(current):
                break
            current = parent
        return {"id": current.oid, "title": current.title, "date": _hub_date(current.date)}

    def _entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict[str, Any]:
        """One tree / paths-info entry, in the Hub's shape."""
        blob = commit.files.get(path)
        if blob is not None:
            entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.is_lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
        else:
            entry = {"type": "directory", "oid": commit.tree_oids[path], "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path, is_folder=blob is None)
        return entry

    def _tree(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = repo.commits[self._resolve_revision(repo, revision)]
        path = path.strip("/")
        expand = req.flag("expand")
        if path in commit.files:
            paths = [path]  # listing a file answers the file itself
        elif path and path not in commit.tree_oids:
            raise HubError(404, f"{path} does not exist on {revision!r}", code="EntryNotFound")
        else:
            prefix = f"{path}/" if path else ""
            below = [p for p in list(commit.files) + list(commit.tree_oids) if p and p.startswith(prefix)]
            if not req.flag("recursive"):
                below = [p for p in below if "/" not in p[len(prefix) :]]
            # Folders first, then files, each sorted, like the Hub's non-recursive listing.
            paths = sorted(below, key=lambda p: (p in commit.files, p))
        # Cursor pagination: the cursor is the offset, and the Link header repeats the query, as on the Hub.
        cursor = req.param("cursor") or "0"
        if not cursor.isdigit():
            raise HubError(400, f"Invalid cursor: {cursor!r}")
        start = int(cursor)
        page = paths[start : start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(paths):
            query = {key: values[-1] for key, values in req.query.items() if key != "cursor"}
            query["cursor"] = str(start + self.tree_page_size)
            headers["Link"] = f'<{self.url}{req.path}?{urlencode(query)}>; rel="next"'
        return _Response.json([self._entry(repo, commit, p, expand) for p in page], headers=headers)

    def _paths_info(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = repo.commits[self._resolve_revision(repo, revision)]
        # `HfApi.get_paths_info` posts a form (paths=a&paths=b&expand=false); accept JSON too.
        if req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1].lower() in ("1", "true")
        else:
            payload = req.json() or {}
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or (path and path in commit.tree_oids):
                entries.append(self._entry(repo, commit, path, expand))
        return _Response.json(entries)

    # -- upload -------------------------------------------------------------------------------------------------------

    def _writable_branch(self, req: _Request, repo: _Repo, revision: str) -> str:
        if req.flag("create_pr"):
            raise HubError(400, "LocalHubServer does not support pull requests (create_pr)")
        if revision not in repo.branches:
            raise HubError(
                404, f"Invalid rev id: {revision} (commits go to an existing branch)", code="RevisionNotFound"
            )
        return revision

    def _preupload(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        head = repo.commits[repo.branches[self._writable_branch(req, repo, revision)]]
        files = []
        for item in (req.json() or {}).get("files", []):
            path = _clean_path(item["path"])
            sample = base64.b64decode(item.get("sample", ""))
            answer: dict[str, Any] = {
                "path": item["path"],
                "uploadMode": "lfs" if self._lfs_mode(repo, head, path, int(item["size"]), sample) else "regular",
                "shouldIgnore": False,
            }
            existing = head.files.get(path)
            if existing is not None:
                # The client skips files whose oid did not change (sha256 for LFS files, git sha1 for others).
                answer["oid"] = existing.etag
            files.append(answer)
        return _Response.json({"files": files, "commitOid": head.oid})

    def _commit_endpoint(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        assert req.user is not None
        branch = self._writable_branch(req, repo, revision)
        head = repo.commits[repo.branches[branch]]
        try:
            lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        if not all(isinstance(line, dict) for line in lines):
            raise HubError(400, "Every line of the commit payload must be a JSON object")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0].get("value") or {}
        summary = header.get("summary") or ""
        if not summary:
            raise HubError(400, "Commit summary must not be empty")
        parent_commit = header.get("parentCommit")
        if parent_commit and not head.oid.startswith(parent_commit):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        snapshot = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            raw_path = value.get("path", "")
            # Folder deletions come with a trailing "/" ("checkpoints/"), which a file path must not have.
            path = _clean_path(raw_path.rstrip("/") if key == "deletedFolder" else raw_path)
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')!r}")
                snapshot[path] = _Blob.regular(base64.b64decode(value.get("content", "")))
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid not in self._lfs:
                    raise HubError(422, f"LFS object {oid} of {path} was not uploaded")
                snapshot[path] = _Blob.lfs(oid, len(self._lfs[oid]))
            elif key == "deletedFile":
                if snapshot.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            elif key == "deletedFolder":
                inside = [p for p in snapshot if p.startswith(path + "/")]
                if not inside:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in inside:
                    del snapshot[p]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit = self._commit(repo, branch, snapshot, summary, header.get("description") or "", req.user.name)
        return _Response.json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _lfs_batch(self, req: _Request, repo_type: RepoType, repo_id: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        payload = req.json() or {}
        if payload.get("operation") != "upload":
            raise HubError(400, "LocalHubServer only serves LFS uploads")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "LocalHubServer only speaks the basic LFS transfer")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item.get("oid"), item.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                error = {"code": 422, "message": "Invalid oid or size"}
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error})
                continue
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self._lfs:  # stored objects get no actions: the client skips their upload
                ticket = secrets.token_urlsafe(16)
                self._upload_tickets[ticket] = (oid, size)
                base = f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects"
                # No `chunk_size` in the upload header: the client then makes one PUT (no multipart).
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-upload/{oid}?ticket={ticket}", "header": {}},
                    "verify": {"href": f"{base}/verify", "header": {}},
                }
            objects.append(answer)
        return _Response.json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_upload(self, req: _Request, oid: str) -> _Response:
        # Like a pre-signed S3 URL: no Authorization, the ticket from the batch answer is the credential.
        announced = self._upload_tickets.get(req.param("ticket") or "")
        if announced is None or announced[0] != oid:
            raise HubError(403, "Invalid or expired upload URL")
        size = announced[1]
        if len(req.body) != size:
            raise HubError(400, f"Size mismatch for {oid}: announced {size} bytes, received {len(req.body)}")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, f"sha256 mismatch for {oid}")
        self._lfs[oid] = req.body
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def _lfs_verify(self, req: _Request, repo_type: RepoType, repo_id: str) -> _Response:
        self._get_repo(req, repo_type, repo_id, write=True)
        payload = req.json() or {}
        oid, size = payload.get("oid"), payload.get("size")
        if oid not in self._lfs or len(self._lfs[oid]) != size:
            raise HubError(404, f"LFS object {oid} of size {size} not found")
        return _Response.json({"success": True})

    # -- download -----------------------------------------------------------------------------------------------------

    def _resolve(self, req: _Request, repo_type: RepoType, repo_id: str, revision: str, filename: str) -> _Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit_oid = self._resolve_revision(repo, revision)
        blob = repo.commits[commit_oid].files.get(filename)
        if blob is None:
            # X-Repo-Commit lets the client cache the absence of the file at this commit.
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit_oid})
        content = self._content(blob)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{blob.etag}"',
            "X-Repo-Commit": commit_oid,
            "Accept-Ranges": "bytes",
        }
        if blob.is_lfs:
            # What the Hub puts on the redirect to its CDN; huggingface_hub prefers these to ETag / Content-Length.
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        range_header = req.headers.get("range")
        if range_header:
            span = self._parse_range(range_header, len(content))
            if span is None:
                raise HubError(
                    416, f"Range not satisfiable: {range_header}", headers={"Content-Range": f"bytes */{len(content)}"}
                )
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return _Response(206, content[start : end + 1], headers)
        return _Response(200, content, headers)

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int] | None:
        """A single "bytes=a-b", "bytes=a-" or "bytes=-n" range -> inclusive (start, end), or None if unsatisfiable."""
        match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
        if match is None or match.group(1) == match.group(2) == "":
            return None
        first, last = match.groups()
        if first == "":  # suffix range: the last n bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        return (start, end) if start <= end and start < size else None


# ---------------------------------------------------------------------------------------------------------------------
# HTTP


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, bound to the `LocalHubServer` whose state it serves."""

    daemon_threads = True  # idle keep-alive connections must not block stop()
    request_queue_size = 64  # clients open several connections at once (parallel tree listings, LFS uploads)

    def __init__(self, hub: LocalHubServer, address: tuple[str, int]) -> None:
        self.hub = hub
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection (a killed process, a timeout) is not a server bug: no traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("LocalHubServer: %s dropped the connection", client_address)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Adapts http.server to `LocalHubServer.handle`: reads the body, writes the answer, keeps connections alive."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server_version = "LocalHubServer"
    timeout = 60  # seconds an idle keep-alive connection holds its thread

    def _serve(self) -> None:
        body = self._read_body()
        hub = cast(_HTTPServer, self.server).hub
        headers = {key.lower(): value for key, value in self.headers.items()}
        response = hub.handle(self.command, self.path, headers, body)
        self.send_response(response.status)
        headers_out = {"Content-Length": str(len(response.body)), "X-Request-Id": secrets.token_hex(8)}
        headers_out.update(response.headers)
        for name, value in headers_out.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        # The whole body is always read, even for answers that ignore it, so the next request on the connection
        # starts at the right byte. httpx streams file uploads with chunked encoding when it cannot size them.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("LocalHubServer: " + format, *args)


# ---------------------------------------------------------------------------------------------------------------------
# Client processes


def run_hub_client(
    code: str, env: Mapping[str, str], *, cwd: str | os.PathLike[str] | None = None, timeout: float = 300
) -> str:
    """Runs `code` (dedented) in a fresh interpreter with `env` (see `LocalHubServer.client_env`); returns its stdout.

    A client that exits with an error raises AssertionError with the end of its stderr, so a failing test shows the
    client's traceback. A script that expects an error catches it and prints what the test should check.
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"hub client exited with {result.returncode}:\n{result.stderr[-6000:]}")
    return result.stdout
