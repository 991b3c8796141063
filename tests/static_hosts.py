"""HTTP hosts that are not `webmoe serve`, for the tests of the npm package and of packages as static folders:
a plain static file server (no Range: whole files only; CORS optional, like a CDN; paths that redirect), and a
host laid out as the Hugging Face Hub lays repositories out (/ORG/REPO/resolve/REVISION/FILE answered with a
redirect to a CDN path; /api/models/ORG/REPO/revision/REVISION and .../tree/REVISION, which huggingface_hub's
snapshot_download asks first)."""
from __future__ import annotations

import hashlib
import mimetypes
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from browser import serving

CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Content-Length, ETag, X-Repo-Commit"}


def file_response(path: Path, headers: dict) -> web.Response:
    """The whole file, whatever Range the request asks for (as a host that does not offer Range)."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix in (".js", ".mjs"):
        kind = "text/javascript"
    return web.Response(body=path.read_bytes(), content_type=kind, headers=headers)


def inside(root: Path, rel: str) -> Path | None:
    path = (root / rel).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def static_app(root: Path, cors: bool = False, redirect_to: str | None = None, log: list | None = None,
               cut: set | None = None) -> web.Application:
    """Serves root's files as they are. cors: Access-Control-Allow-Origin: * (a CDN). redirect_to: every
    request under /moved/ is answered 302 with that base URL + the rest of the path. log: (method, path,
    Range header) of each request. cut: names of files whose first transfer stops halfway (the connection
    closes after half the bytes; the name then leaves the set)."""
    headers = CORS if cors else {}

    async def get(request):
        rel = request.match_info["path"]
        if log is not None:
            log.append((request.method, "/" + rel, request.headers.get("Range")))
        if redirect_to is not None and rel.startswith("moved/"):
            raise web.HTTPFound(redirect_to + rel[len("moved/"):], headers=headers)
        path = inside(root, rel or "index.html")
        if path is not None and path.is_dir():
            path = path / "index.html"
        if path is None or not path.is_file():
            raise web.HTTPNotFound(headers=headers)
        if cut is not None and path.name in cut:
            cut.discard(path.name)
            body = path.read_bytes()
            resp = web.StreamResponse(headers={**headers, "Content-Length": str(len(body)),
                                               "Content-Type": "application/octet-stream"})
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            request.transport.close()                 # the link drops mid-file
            return resp
        return file_response(path, headers)

    async def preflight(request):           # a plain host answers nothing special; a CDN allows GET
        return web.Response(status=204, headers={**headers, "Access-Control-Allow-Methods": "GET"})

    app = web.Application()
    app.router.add_get("/{path:.*}", get)
    app.router.add_route("OPTIONS", "/{path:.*}", preflight)
    return app


@contextmanager
def static_host(root: Path, **kwargs):
    with serving(static_app(root, **kwargs)) as url:
        yield url


def hub_app(repos: dict[str, dict[str, Path]], log: list | None = None) -> web.Application:
    """repos: "ORG/REPO" -> {revision: folder}. A revision's commit is the sha1 of its name and its files'
    bytes; "main" may be asked for by name or by commit, as on the Hub."""
    commits = {}
    for repo, revisions in repos.items():
        for rev, folder in revisions.items():
            h = hashlib.sha1(rev.encode())
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
            commits[(repo, rev)] = commits[(repo, h.hexdigest())] = (h.hexdigest(), folder)

    def find(request):
        key = (f"{request.match_info['org']}/{request.match_info['repo']}", request.match_info["rev"])
        if key[0] not in repos:
            raise web.HTTPNotFound(headers={**CORS, "X-Error-Code": "RepoNotFound"}, text="Repository Not Found")
        if key not in commits:
            raise web.HTTPNotFound(headers={**CORS, "X-Error-Code": "RevisionNotFound"}, text="Revision Not Found")
        return commits[key]

    async def resolve(request):              # the Hub answers with a redirect to its CDN
        commit, folder = find(request)
        path = inside(folder, request.match_info["file"])
        if log is not None:
            log.append((request.method, request.path, request.headers.get("Range")))
        if path is None or not path.is_file():
            raise web.HTTPNotFound(headers={**CORS, "X-Error-Code": "EntryNotFound"}, text="Entry not found")
        etag = '"' + hashlib.sha256(path.read_bytes()).hexdigest() + '"'
        # to another host, as the Hub's to its CDN (this server as "localhost"): huggingface_hub follows
        # redirects within a host on its HEAD request and reads the commit and ETag of one that leaves it
        # from the redirect itself; a browser meets a redirect to another origin
        cdn = request.url.with_host("localhost" if request.url.host != "localhost" else "127.0.0.1").with_path(f"/cdn/{commit}/{request.match_info['org']}/{request.match_info['repo']}/"
                                    f"{request.match_info['file']}")
        raise web.HTTPFound(str(cdn), headers={**CORS, "X-Repo-Commit": commit, "ETag": etag, "X-Linked-Etag": etag,
                                          "X-Linked-Size": str(path.stat().st_size)})

    async def cdn(request):
        commit, org, repo, rel = (request.match_info[k] for k in ("commit", "org", "repo", "file"))
        key = (f"{org}/{repo}", commit)
        if key not in commits:
            raise web.HTTPNotFound(headers=CORS)
        path = inside(commits[key][1], rel)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(headers=CORS)
        return file_response(path, {**CORS, "ETag": '"' + hashlib.sha256(path.read_bytes()).hexdigest() + '"'})

    async def revision(request):
        commit, folder = find(request)
        files = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        return web.json_response({"id": repo, "modelId": repo, "sha": commit,
                                  "siblings": [{"rfilename": f} for f in files]}, headers=CORS)

    async def tree(request):                 # a revision's files, one page (no Link header: the last page)
        commit, folder = find(request)
        return web.json_response([{"type": "file", "path": f.relative_to(folder).as_posix(), "size": f.stat().st_size,
                                   "oid": hashlib.sha1(f.read_bytes()).hexdigest()}
                                  for f in sorted(folder.rglob("*")) if f.is_file()], headers=CORS)

    app = web.Application()
    app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", revision)
    app.router.add_get("/api/models/{org}/{repo}/tree/{rev}", tree)
    app.router.add_get("/{org}/{repo}/resolve/{rev}/{file:.+}", resolve)
    app.router.add_get("/cdn/{commit}/{org}/{repo}/{file:.+}", cdn)
    return app


@contextmanager
def hub_host(repos: dict[str, dict[str, Path]], log: list | None = None):
    with serving(hub_app(repos, log)) as url:
        yield url
