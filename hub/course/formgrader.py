"""The formgrader service's guard rails: it runs in the hub container as the grader user, for
instructors and TAs, so it may show and grade, but not run code or write files, and what it
shows of a student's work cannot act in the browser of the staff member who reads it.

- **No code, no files.** A Jupyter server normally gives whoever reaches it kernels, terminals
  and write access to its files. Kernels are off (no kernel spec is allowed), terminals are off,
  and the contents API is read-only (``ReadOnlyContentsManager``). nbgrader's own actions
  (generate, release, collect, autograde, feedback) go through the formgrader's API, and
  autograde runs students' code in sandboxes.
- **No configuration from a request.** nbgrader's ``/formgrader?path=DIR`` loads
  ``DIR/nbgrader_config.py`` (Python) as the grader: a link with a folder a student controls
  would run their code. Here the formgrader always uses the lab's configuration; ``path`` is
  refused with a message.
- **Roles.** Every request that changes something (any method but GET, HEAD, OPTIONS) needs
  ``course.manage`` in ``hub.permissions``: instructors act; TAs read.
- **Student content is inert.** Notebooks are sanitised before they are rendered
  (``SanitizeStudentHTML``: markdown and HTML outputs through bleach, no scripts, SVG,
  JavaScript outputs, event handlers or ``javascript:`` links). Every HTML page carries a
  Content-Security-Policy whose scripts must bear a fresh nonce that only the page's own
  scripts get, never the part where a student's notebook is shown (``StaffPageCSP``), so even
  HTML that got past the sanitiser runs no script.
  A student's files served by the formgrader (``.../submissions/<id>/<file>``) get a
  sandboxing CSP and ``nosniff``.

Ours because nbgrader's formgrader assumes a trusted single-user course folder; these are the
smallest changes that make it safe to show untrusted students' work to staff.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets

import bleach
from bleach.css_sanitizer import CSSSanitizer
from jupyter_server.services.contents.largefilemanager import LargeFileManager
from nbconvert.preprocessors import Preprocessor
from tornado import web

from hub.permissions import may, role_of, who_may


class ReadOnlyContentsManager(LargeFileManager):
    def _refuse(self, *args, **kwargs):
        raise web.HTTPError(403, "the course folder is read-only in the formgrader")

    save = _refuse
    delete_file = _refuse
    rename_file = _refuse
    new_untitled = _refuse
    copy = _refuse


# -- sanitising what students wrote -------------------------------------------------------------

ALLOWED_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details", "div",
    "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins",
    "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
    "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var",
})
ALLOWED_ATTRIBUTES = {
    "*": ["class", "title", "style", "align"],
    "a": ["href", "title"],
    "img": ["src", "alt", "width", "height"],
    "td": ["colspan", "rowspan"],
    "th": ["colspan", "rowspan", "scope"],
}
ALLOWED_PROTOCOLS = frozenset({"http", "https", "mailto", "data"})
# Output types that are kept (after sanitising the HTML ones); any other (JavaScript, SVG, widgets,
# anything a renderer could run) becomes a note in text/plain.
SAFE_OUTPUT_TYPES = frozenset({"text/plain", "image/png", "image/jpeg", "image/gif", "text/latex"})
HTML_OUTPUT_TYPES = frozenset({"text/html", "text/markdown"})


def clean_html(text: str) -> str:
    cleaned = bleach.clean(text, tags=ALLOWED_TAGS, attributes=_attribute_filter, protocols=ALLOWED_PROTOCOLS,
                           strip=True, strip_comments=True, css_sanitizer=CSSSanitizer())
    return cleaned


def _attribute_filter(tag: str, name: str, value: str) -> bool:
    if name in ALLOWED_ATTRIBUTES.get("*", ()) or name in ALLOWED_ATTRIBUTES.get(tag, ()):
        if name == "src" and tag == "img":
            # Only inline raster images: nothing fetched, no SVG (which can hold scripts).
            return bool(re.match(r"^data:image/(png|jpeg|gif);base64,", value.strip(), re.I))
        if name == "href" and value.strip().lower().startswith("data:"):
            return False
        return True
    return False


class SanitizeStudentHTML(Preprocessor):
    """Make a student's notebook inert before it is rendered for staff (formgrader) or into
    feedback: markdown is rendered and cleaned here, HTML outputs are cleaned, and any output
    type that a browser could run is replaced by a note."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            from nbconvert.filters.markdown import markdown2html
            cell.source = clean_html(markdown2html(cell.source))
            cell.pop("attachments", None)
        elif cell.cell_type == "raw":
            cell.source = clean_html(cell.source)
        elif cell.cell_type == "code":
            for output in cell.get("outputs", []):
                data = output.get("data")
                if not data:
                    continue
                for mime in list(data):
                    if mime in SAFE_OUTPUT_TYPES:
                        continue
                    if mime in HTML_OUTPUT_TYPES:
                        text = data[mime] if isinstance(data[mime], str) else "".join(data[mime])
                        if mime == "text/markdown":
                            from nbconvert.filters.markdown import markdown2html
                            text = markdown2html(text)
                        data[mime] = clean_html(text)
                        continue
                    del data[mime]
                    data.setdefault("text/plain", f"[{mime} output not shown: it could run code in the browser]")
        return cell, resources


# -- the formgrader server extension ------------------------------------------------------------

PATH_REFUSED = ("the formgrader uses the lab's own course folder and configuration; "
                "a path in the link is not accepted")

# nbgrader's templates use these two inline handlers (show or hide a student's name).
INLINE_HANDLERS = ("toggle_name(true);", "toggle_name(false);", "toggleAllNames()")
FILES_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def staff_page_csp(nonce: str) -> str:
    handlers = " ".join(_hash(h) for h in INLINE_HANDLERS)
    return ("default-src 'self'; "
            f"script-src 'nonce-{nonce}' 'unsafe-hashes' {handlers}; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
            "frame-ancestors 'none'")


SCRIPT_TAG = re.compile(rb"<script\b", re.I)
SUBMISSION_FILE = re.compile(r"/formgrader/submissions/(?!components/)[^/]+/[^/]+")


def add_nonces(body: bytes, nonce: str) -> bytes:
    """Give the nonce to the page's own scripts: those before the student's notebook on a
    submission page (nbgrader's head and navigation bar), those of the <head> elsewhere; never
    to anything where a student's work is shown."""
    lower = body.lower()
    at = lower.find(b'id="notebook-container"')
    if at < 0:
        at = lower.find(b"</head>")
    if at < 0:
        return body
    head = SCRIPT_TAG.sub(b'<script nonce="' + nonce.encode() + b'"', body[:at])
    return head + body[at:]


class StaffPageCSP(web.OutputTransform):
    """Per-response CSP: HTML pages get the nonce policy; students' files get a sandbox."""

    def __init__(self, request):
        self.request = request
        # nbgrader serves a submission's own files at .../formgrader/submissions/<id>/<file>
        self.files = bool(SUBMISSION_FILE.search(request.path))

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        if self.files:
            headers["Content-Security-Policy"] = FILES_CSP
            return status_code, headers, chunk
        ctype = headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            nonce = secrets.token_urlsafe(18)
            headers["Content-Security-Policy"] = staff_page_csp(nonce)
            if finishing:
                chunk = add_nonces(chunk, nonce)
                if "Content-Length" in headers:
                    headers["Content-Length"] = str(len(chunk))
        elif "Content-Security-Policy" not in headers or "frame-ancestors 'self'" in headers["Content-Security-Policy"]:
            headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
        return status_code, headers, chunk


def _operators() -> frozenset[str]:
    from hub.settings import current
    return frozenset(current("formgrader").get("auth.admin_users"))


def _guard_writes(handler_class) -> None:
    """Refuse every request but GET/HEAD/OPTIONS from anyone without course.manage."""
    original = handler_class.prepare

    async def prepare(self, *args, **kwargs):
        result = await original(self, *args, **kwargs)
        if self.request.method not in ("GET", "HEAD", "OPTIONS") and not self._finished:
            hub_user = getattr(self.current_user, "hub_user", None)
            role = role_of(hub_user, _operators())
            if not may(role, "course.manage"):
                self.log.warning("formgrader: %s (%s) may not %s %s", (hub_user or {}).get("name"), role,
                                 self.request.method, self.request.path)
                # Answered here, as JSON with the reason (nbgrader's error pages would drop it).
                self.set_status(403)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"message": f"only {who_may('course.manage')} may change grades, students "
                                                   f"or assignments here (you are {role or 'not on the roster'})"}))
                return None
        return result

    handler_class.prepare = prepare


def _refuse_path(handler_class) -> None:
    original = handler_class.get

    def get(self, *args, **kwargs):
        if self.get_argument("path", ""):
            raise web.HTTPError(400, PATH_REFUSED)
        return original(self, *args, **kwargs)

    handler_class.get = get


def _jupyter_server_extension_points():
    return [{"module": "hub.course.formgrader"}]


def _load_jupyter_server_extension(serverapp):
    from jupyter_server.base.handlers import JupyterHandler
    from nbgrader.server_extensions.formgrader import handlers

    if not getattr(JupyterHandler, "_lab_guarded", False):
        _guard_writes(JupyterHandler)
        JupyterHandler._lab_guarded = True
        _refuse_path(handlers.FormgraderHandler)
    serverapp.web_app.add_transform(StaffPageCSP)
    serverapp.log.info("formgrader guard rails: writes need %s; no config path; CSP on every page",
                       who_may("course.manage"))
