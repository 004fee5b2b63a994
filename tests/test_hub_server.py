"""Tests of the local Hub server (tests/hub_server.py) with the real clients.

Protocol details are checked with plain urllib requests from this process. Everything a client library does runs in
a fresh interpreter (`run_hub_client`) whose environment points at the server: the test process imported
huggingface_hub offline (conftest.py), and its endpoint and offline flag are frozen at import.
"""

import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from email.message import Message
from pathlib import Path

import pytest
from hub_server import LocalHubServer, git_blob_oid, run_hub_client
from huggingface_hub.utils.sha import git_hash

# urllib honours HTTP(S)_PROXY: talk to 127.0.0.1 directly whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    hub: LocalHubServer,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
) -> tuple[int, Message, bytes]:
    """One raw request to the server: (status, headers, body), error statuses included.

    An iterable body is sent with Transfer-Encoding: chunked."""
    request = urllib.request.Request(hub.url + path, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def last_json(stdout: str):
    """The JSON value a client script printed last."""
    return json.loads(stdout.strip().splitlines()[-1])


# -- protocol, over raw HTTP ------------------------------------------------------------------------------------------


def test_whoami_answers_401_without_a_valid_token(hub):
    status, headers, _ = http(hub, "GET", "/api/whoami-v2")
    assert status == 401
    status, headers, _ = http(hub, "GET", "/api/whoami-v2", {"Authorization": "Bearer hf_not_a_token"})
    assert (status, headers["X-Error-Message"]) == (401, "Invalid credentials in Authorization header")
    status, _, body = http(hub, "GET", "/api/whoami-v2", {"Authorization": f"Bearer {hub.token}"})
    assert status == 200 and json.loads(body)["name"] == hub.user == "user"


def test_resolve_headers_ranges_and_errors(hub):
    text, weights = b"hello world\n", bytes(range(256)) * 4
    commit = hub.add_files("user/model", {"notes/readme.txt": text, "model.safetensors": weights})
    assert hub.lfs_files("user/model") == {"model.safetensors"}  # by the default .gitattributes

    # Regular file: the ETag is the git blob sha1 (computed here by huggingface_hub's own implementation).
    status, headers, body = http(hub, "HEAD", "/user/model/resolve/main/notes/readme.txt")
    assert (status, body) == (200, b"")
    assert headers["ETag"] == f'"{git_hash(text)}"' == f'"{git_blob_oid(text)}"'
    assert headers["X-Repo-Commit"] == commit and headers["Content-Length"] == str(len(text))
    assert "X-Linked-Etag" not in headers

    # LFS file: the ETag is the sha256, also in X-Linked-Etag with X-Linked-Size, as on the Hub.
    sha256 = hashlib.sha256(weights).hexdigest()
    status, headers, body = http(hub, "GET", f"/user/model/resolve/{commit}/model.safetensors")
    assert (status, body) == (200, weights)
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{sha256}"'
    assert headers["X-Linked-Size"] == str(len(weights))

    for range_header, (start, end) in {
        "bytes=10-19": (10, 19),
        "bytes=1000-": (1000, 1023),
        "bytes=-5": (1019, 1023),
    }.items():
        status, headers, body = http(hub, "GET", "/user/model/resolve/main/model.safetensors", {"Range": range_header})
        assert (status, body) == (206, weights[start : end + 1]), range_header
        assert headers["Content-Range"] == f"bytes {start}-{end}/1024"
    status, headers, _ = http(hub, "GET", "/user/model/resolve/main/model.safetensors", {"Range": "bytes=5000-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(weights)}")

    # Errors carry the Hub's X-Error-Code, which huggingface_hub turns into its typed exceptions.
    status, headers, _ = http(hub, "HEAD", "/user/model/resolve/main/missing.json")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", commit)
    status, headers, _ = http(hub, "HEAD", "/user/model/resolve/no-such-branch/model.safetensors")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = http(hub, "HEAD", "/user/nothing/resolve/main/a.txt")
    assert (status, headers["X-Error-Code"]) == (401, "RepoNotFound")  # anonymous: 401, like the Hub
    status, headers, _ = http(
        hub, "HEAD", "/datasets/user/model/resolve/main/a.txt", {"Authorization": f"Bearer {hub.token}"}
    )
    assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")  # a model is not a dataset


def test_lfs_batch_upload_and_verify(hub):
    hub.add_files("user/model", {"stored.bin": b"\0already stored"})
    auth = {"Authorization": f"Bearer {hub.token}", "Content-Type": "application/vnd.git-lfs+json"}
    content = b"\0new object" * 100
    objects = [
        {"oid": hashlib.sha256(b"\0already stored").hexdigest(), "size": 16},
        {"oid": hashlib.sha256(content).hexdigest(), "size": len(content)},
    ]
    batch = json.dumps({"operation": "upload", "transfers": ["basic", "multipart"], "objects": objects}).encode()
    status, _, body = http(hub, "POST", "/user/model.git/info/lfs/objects/batch", auth, batch)
    assert status == 200
    answer = json.loads(body)
    assert answer["transfer"] == "basic"
    stored, new = answer["objects"]
    assert "actions" not in stored  # already in the store: the client skips the upload
    upload, verify = new["actions"]["upload"], new["actions"]["verify"]
    assert upload["header"] == {}  # no chunk_size: a single PUT, never multipart

    path = upload["href"].removeprefix(hub.url)
    assert http(hub, "PUT", path.split("?")[0], body=content)[0] == 403  # the ticket is the credential
    assert http(hub, "PUT", path, body=content[:-1] + b"!")[0] == 400  # wrong sha256
    # A streamed body (Transfer-Encoding: chunked, as httpx sends unsized files) is accepted.
    assert http(hub, "PUT", path, body=iter([content[:500], content[500:]]))[0] == 200
    assert hub.lfs_objects[objects[1]["oid"]] == len(content)
    verify_body = json.dumps({"oid": objects[1]["oid"], "size": len(content)}).encode()
    assert http(hub, "POST", verify["href"].removeprefix(hub.url), auth, verify_body)[0] == 200
    # Writing needs a token.
    assert http(hub, "POST", "/user/model.git/info/lfs/objects/batch", body=batch)[0] == 401


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_object_ids_are_the_ones_git_computes(hub, tmp_path):
    files = {"a.txt": b"top\n", "a-b": b"sorts before a/ in git trees", "a/b/c.txt": b"x", "a/d": b"yy"}
    commit = hub.add_files("user/model", files)
    status, _, body = http(hub, "GET", f"/api/models/user/model/tree/{commit}")
    folder_oid = {entry["path"]: entry["oid"] for entry in json.loads(body)}["a"]

    work = tmp_path / "git"
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(content)
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *command], cwd=work, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=work, check=True, capture_output=True, text=True).stdout.strip()
    listing = subprocess.run(["git", "ls-tree", tree], cwd=work, check=True, capture_output=True, text=True).stdout
    assert f"tree {folder_oid}\ta\n" in listing
    blob = subprocess.run(["git", "hash-object", "a.txt"], cwd=work, check=True, capture_output=True, text=True)
    assert blob.stdout.strip() == git_blob_oid(files["a.txt"])


def test_fail_next_rejects_unknown_endpoints(hub):
    with pytest.raises(ValueError, match="Unknown endpoint"):
        hub.fail_next("upload")  # type: ignore[arg-type]


# -- huggingface_hub --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_whoami_and_create_repo_with_the_client(hub, client, tmp_path):
    out = client(
        """
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        name = api.whoami()["name"]
        try:
            api.whoami(token="hf_not_a_token")
        except HfHubHTTPError as err:
            invalid = [err.response.status_code, str(err)]
        first = api.create_repo("user/model")
        again = api.create_repo("user/model", exist_ok=True)  # 409 + {"url": ...} from the server
        try:
            api.create_repo("user/model")
        except HfHubHTTPError as err:
            conflict = err.response.status_code
        dataset = api.create_repo("user/data", repo_type="dataset", private=True)
        print(json.dumps({
            "name": name, "invalid": invalid, "urls": [first, again, dataset], "conflict": conflict,
            "repo_id": again.repo_id, "dataset_type": dataset.repo_type,
        }))
        """
    )
    result = last_json(out)
    assert result["name"] == "user"
    assert result["invalid"][0] == 401 and "Invalid user token" in result["invalid"][1]
    assert result["urls"] == [f"{hub.url}/user/model", f"{hub.url}/user/model", f"{hub.url}/datasets/user/data"]
    assert (result["conflict"], result["repo_id"], result["dataset_type"]) == (409, "user/model", "dataset")
    assert hub.has_repo("user/data", "dataset")

    # An anonymous client has no token to send, and does not see the private dataset.
    anonymous = hub.client_env(tmp_path / "anonymous_home", anonymous=True)
    out = run_hub_client(
        """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import LocalTokenNotFoundError, RepositoryNotFoundError
        api = HfApi()
        try:
            api.whoami()
        except LocalTokenNotFoundError:
            print("no token")
        try:
            api.dataset_info("user/data")
        except RepositoryNotFoundError:
            print("private repo hidden")
        print(api.model_info("user/model").id)
        """,
        anonymous,
    )
    assert out.split() == ["no", "token", "private", "repo", "hidden", "user/model"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder: a regular text file, a small .safetensors file (LFS by name) and a text file large enough
    for LFS under the server's lowered threshold."""
    folder = tmp_path / "folder"
    (folder / "notes").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "demo", "hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    (folder / "notes" / "big.txt").write_text("a line of text\n" * 200)  # 3000 bytes
    return folder


@pytest.mark.slow
def test_upload_folder_then_download_with_the_client(hub, client, folder):
    hub.lfs_threshold = 2048  # forces LFS for notes/big.txt, like a 10 MB text file on the Hub
    out = client(
        f"""
        import json
        from pathlib import Path
        from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
        folder = Path({str(folder)!r})
        api = HfApi()
        api.create_repo("user/model")
        commit = api.upload_folder(folder_path=folder, repo_id="user/model", commit_message="Upload the folder")
        for name in ["config.json", "model.safetensors", "notes/big.txt"]:
            assert Path(hf_hub_download("user/model", name)).read_bytes() == (folder / name).read_bytes(), name
        snapshot = Path(snapshot_download("user/model"))
        assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == [
            ".gitattributes", "config.json", "model.safetensors", "notes/big.txt"
        ]
        assert (snapshot / "notes/big.txt").read_bytes() == (folder / "notes/big.txt").read_bytes()
        metadata = {{
            name: get_hf_file_metadata(hf_hub_url("user/model", name)).__dict__
            for name in ["config.json", "model.safetensors"]
        }}
        # Uploading the same folder again changes nothing: the preupload oids match, so the client skips the commit.
        again = api.upload_folder(folder_path=folder, repo_id="user/model")
        print(json.dumps({{"commit": commit.oid, "again": again.oid, "metadata": metadata}}, default=str))
        """
    )
    result = last_json(out)
    assert result["again"] == result["commit"]
    assert hub.commit_titles("user/model") == ["Upload the folder", "initial commit"]
    assert hub.lfs_files("user/model") == {"model.safetensors", "notes/big.txt"}
    stored = hub.repo_files("user/model")
    assert {name: stored[name] for name in ["config.json", "model.safetensors", "notes/big.txt"]} == {
        name: (folder / name).read_bytes() for name in ["config.json", "model.safetensors", "notes/big.txt"]
    }
    config, weights = result["metadata"]["config.json"], result["metadata"]["model.safetensors"]
    assert config["commit_hash"] == weights["commit_hash"] == result["commit"]
    assert config["etag"] == git_blob_oid(stored["config.json"]) and config["size"] == len(stored["config.json"])
    assert weights["etag"] == hashlib.sha256(stored["model.safetensors"]).hexdigest()
    assert weights["size"] == 4096
    # The uploads went through the LFS batch API (one PUT per new object) and the downloads through resolve.
    assert len(hub.requests_to("lfs-upload")) == 2 and hub.requests_to("lfs-verify")


@pytest.mark.slow
def test_listing_info_and_ranges_with_the_client(hub, client, folder):
    hub.tree_page_size = 2  # the recursive listing (5 entries) spans 3 pages linked by Link headers
    commit = hub.add_files(
        "user/model", {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}
    )
    out = client(
        """
        import json
        from huggingface_hub import HfApi, HfFileSystem
        api = HfApi()
        info = api.model_info("user/model", files_metadata=True)
        tree = [(entry.path, type(entry).__name__) for entry in api.list_repo_tree("user/model", recursive=True)]
        top = [entry.path for entry in api.list_repo_tree("user/model")]
        paths = api.get_paths_info("user/model", ["config.json", "notes", "missing.txt"], expand=True)
        with HfFileSystem().open("user/model/model.safetensors", "rb", block_size=16) as f:
            f.seek(100)
            chunk = list(f.read(8))  # a Range request for 16 bytes from offset 100
        print(json.dumps({
            "sha": info.sha, "files": api.list_repo_files("user/model"), "tree": tree, "top": top,
            "lfs": {s.rfilename: s.lfs.sha256 if s.lfs else None for s in info.siblings},
            "paths": [[p.path, type(p).__name__, p.last_commit.title] for p in paths],
            "chunk": chunk,
            "branches": [b.name for b in api.list_repo_refs("user/model").branches],
        }))
        """
    )
    result = last_json(out)
    stored = hub.repo_files("user/model")
    assert result["sha"] == commit
    assert result["files"] == [".gitattributes", "config.json", "model.safetensors", "notes/big.txt"]
    assert sorted(result["tree"]) == sorted(
        [["notes", "RepoFolder"]] + [[name, "RepoFile"] for name in result["files"]]
    )
    assert result["top"] == ["notes", ".gitattributes", "config.json", "model.safetensors"]  # folders first
    assert len(hub.requests_to("tree")) >= 5  # pages of 2: 3 for the recursive listing, 2 for the top level
    assert result["lfs"]["model.safetensors"] == hashlib.sha256(stored["model.safetensors"]).hexdigest()
    assert result["lfs"]["config.json"] is None
    assert result["paths"] == [["config.json", "RepoFile", "Add files"], ["notes", "RepoFolder", "Add files"]]
    assert bytes(result["chunk"]) == stored["model.safetensors"][100:108]
    assert result["branches"] == ["main"]


@pytest.mark.slow
def test_commits_branches_and_deletions_with_the_client(hub, client):
    hub.add_files("user/model", {"a.txt": b"a", "old/x.txt": b"x", "old/y.txt": b"y"})
    out = client(
        """
        import json
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        head = api.model_info("user/model").sha
        api.create_commit(
            "user/model",
            [CommitOperationDelete("old/"), CommitOperationAdd("b.txt", b"b")],
            commit_message="Replace old/ by b.txt",
            parent_commit=head,
        )
        try:  # `head` is no longer the head of main: the server answers 412
            api.create_commit("user/model", [CommitOperationAdd("c", b"c")], commit_message="c", parent_commit=head)
        except HfHubHTTPError as err:
            stale = err.response.status_code
        api.create_branch("user/model", branch="dev")
        api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id="user/model", revision="dev")
        api.create_tag("user/model", tag="v1", revision="dev")
        api.delete_file("a.txt", "user/model")
        refs = api.list_repo_refs("user/model")
        print(json.dumps({
            "stale": stale,
            "main": api.list_repo_files("user/model"),
            "dev": api.list_repo_files("user/model", revision="dev"),
            "v1": api.list_repo_files("user/model", revision="v1"),
            "branches": sorted(b.name for b in refs.branches), "tags": [t.name for t in refs.tags],
            "titles": [c.title for c in api.list_repo_commits("user/model")],
        }))
        api.delete_repo("user/model")
        """
    )
    result = last_json(out)
    assert result["stale"] == 412
    assert result["main"] == [".gitattributes", "b.txt"]
    assert result["dev"] == result["v1"] == [".gitattributes", "a.txt", "b.txt", "dev.txt"]
    assert (result["branches"], result["tags"]) == (["dev", "main"], ["v1"])
    assert result["titles"] == [
        "Delete a.txt with huggingface_hub",
        "Replace old/ by b.txt",
        "Add files",
        "initial commit",
    ]
    assert not hub.has_repo("user/model")


# -- server errors ----------------------------------------------------------------------------------------------------


def test_a_failed_commit_raises_a_clear_error(hub, client):
    hub.add_files("user/model", {})
    hub.fail_next("commit", status=500)
    out = client(
        """
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        try:
            HfApi().upload_file(path_or_fileobj=b"\\0weights", path_in_repo="w.bin", repo_id="user/model")
        except HfHubHTTPError as err:
            print(json.dumps({"status": err.response.status_code, "message": str(err), "server": err.server_message}))
        """
    )
    result = last_json(out)
    assert result["status"] == 500
    assert "/api/models/user/model/commit/main" in result["message"]
    assert result["server"] == "Injected failure: commit answered 500 (LocalHubServer.fail_next)"
    assert result["server"] in result["message"]
    # The LFS upload happened before the commit failed; the repo did not change.
    assert hub.lfs_objects == {hashlib.sha256(b"\0weights").hexdigest(): 8}
    assert hub.commit_titles("user/model") == ["Add files", "initial commit"]


@pytest.mark.slow
def test_lfs_upload_errors_are_retried_then_reported(hub, client):
    hub.add_files("user/model", {})
    hub.fail_next("lfs-upload", times=1, status=500)  # transient: the client retries after 1 s
    client(
        """
        from huggingface_hub import HfApi
        HfApi().upload_file(path_or_fileobj=b"\\0a", path_in_repo="a.bin", repo_id="user/model")
        """
    )
    assert [record.status for record in hub.requests_to("lfs-upload")] == [500, 200]

    hub.fail_next("lfs-upload", times=1, status=507)  # not a status the client retries
    out = client(
        """
        import json
        from huggingface_hub import HfApi
        try:
            HfApi().upload_file(path_or_fileobj=b"\\0b", path_in_repo="b.bin", repo_id="user/model")
        except RuntimeError as err:
            cause = err.__cause__
            status = cause.response.status_code
            print(json.dumps({"message": str(err), "cause": type(cause).__name__, "status": status}))
        """
    )
    assert last_json(out) == {
        "message": "Error while uploading 'b.bin' to the Hub.",
        "cause": "HfHubHTTPError",
        "status": 507,
    }
    assert set(hub.repo_files("user/model")) == {".gitattributes", "a.bin"}


# -- datasets and transformers ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_datasets_push_to_hub_then_load_dataset(hub, client):
    out = client(
        """
        import json
        import datasets
        data = {"text": ["a", "b", "c"], "label": [0, 1, 0]}
        datasets.Dataset.from_dict(data).push_to_hub("user/ds")
        loaded = datasets.load_dataset("user/ds")
        print(json.dumps({"splits": list(loaded), "train": loaded["train"].to_dict(), "expected": data}))
        """
    )
    result = last_json(out)
    assert result["splits"] == ["train"] and result["train"] == result["expected"]
    files = hub.repo_files("user/ds", "dataset")
    assert set(files) == {".gitattributes", "README.md", "data/train-00000-of-00001.parquet"}
    assert hub.lfs_files("user/ds", "dataset") == {"data/train-00000-of-00001.parquet"}
    assert b"path: data/train-*" in files["README.md"]


@pytest.mark.slow
def test_transformers_push_to_hub_then_from_pretrained(hub, client):
    out = client(
        """
        import json
        import torch
        from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification
        config = ViTConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8,
            patch_size=4, num_labels=3,
        )
        model = ViTForImageClassification(config)
        commit = model.push_to_hub("user/tiny-vit")
        loaded = AutoModelForImageClassification.from_pretrained("user/tiny-vit")
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], tensor)
        print(json.dumps({"commit": commit.oid, "class": type(loaded).__name__}))
        """
    )
    result = last_json(out)
    assert result["class"] == "ViTForImageClassification"
    assert hub.lfs_files("user/tiny-vit") == {"model.safetensors"}
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.repo_files("user/tiny-vit"))
