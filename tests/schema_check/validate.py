#!/usr/bin/env python3
"""Validate what an XMPP server sent on one connection against schemas/*.xsd.

Input: the raw bytes a server wrote on one c2s connection: ``<?xml?>``,
``<stream:stream ...>``, then top-level elements, possibly whitespace
keepalives between them, possibly stream restarts (a new header after
STARTTLS or SASL success), possibly truncated without ``</stream:stream>``.

What is checked:

* every stream header: the attributes through the schema of
  http://etherx.jabber.org/streams, plus the RFC 6120 section 4.7 rules a
  schema cannot express (stream namespace, ``xmlns='jabber:client'``,
  version='1.0', from, id (new on every restart), xml:lang, UTF-8);
* every top-level element, with the namespace declarations it inherits from
  its stream header made explicit, through ``schemas/all.xsd`` with xmllint:
  the element's own namespace strictly, every payload whose namespace has a
  schema through the schemas' lax wildcards;
* that an element of a namespace with a schema, where it enters from a parent
  of another namespace (a stanza payload, a stream feature, an error
  condition), is declared globally in that schema (lax wildcards would skip
  an undeclared one silently);
* that a top-level element of a namespace with a schema may stand at the top
  level of a stream (features, stream error, stanzas, TLS and SASL replies);
* restricted XML (RFC 6120 section 11.1): no comments, processing
  instructions or DTDs; only whitespace between top-level elements.

Elements in namespaces without a schema are reported as ``unchecked: <ns>``;
with --strict they count as failures (so does a truncated trailing element).

Usage: validate.py [--strict] [--quiet] [--schemas DIR] [--content-ns NS] FILE...
(FILE '-' reads standard input).  Exit status: 0 all good, 1 something failed
validation, 2 usage or environment error (no xmllint, schemas do not compile).

Standard library only, plus the xmllint binary (Debian: libxml2-utils).
Also importable: ``validate_bytes(data) -> Report``.
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_XS = "http://www.w3.org/2001/XMLSchema"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

DEFAULT_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

# What a server may send at the top level of a c2s stream (RFC 6120 4.3-4.9, 5, 6, 8)
# when the element's namespace is one we have a schema for.  Stanzas are in the
# content namespace (jabber:client unless --content-ns says otherwise).
TOP_LEVEL = {
    (NS_STREAM, "features"), (NS_STREAM, "error"),
    (NS_TLS, "proceed"), (NS_TLS, "failure"),
    (NS_SASL, "challenge"), (NS_SASL, "success"), (NS_SASL, "failure"),
}
STANZAS = ("message", "presence", "iq")


class SetupError(RuntimeError):
    """xmllint missing or the schemas do not load: not a verdict on the input."""


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

@dataclass
class Item:
    """One checked thing: a stream header, a top-level element, or a stream-level fault."""
    kind: str                 # 'header' | 'element' | 'stream'
    index: int                # 1-based position among items of the input
    pos: int                  # character offset in the input where it starts
    line: int                 # line of the input where it starts
    raw: str                  # what the server sent (for headers: the start tag)
    ns: str | None = None
    name: str | None = None
    errors: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)   # namespaces without a schema
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        where = f"line {self.line}, offset {self.pos}"
        if self.kind == "stream":
            return f"#{self.index} stream ({where})"
        what = f"{{{self.ns}}}{self.name}" if self.ns is not None else str(self.name)
        return f"#{self.index} {self.kind} {what} ({where})"


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    strict: bool = False

    @property
    def failures(self) -> list[Item]:
        return [i for i in self.items if i.errors
                or (self.strict and (i.unchecked or i.warnings))]

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self, quiet: bool = False, width: int = 600) -> str:
        out = []
        for it in self.items:
            failed = it in self.failures
            if it.errors or failed:
                out.append(f"FAIL {it.label}")
                out.append("  sent: " + shorten(it.raw, width))
                for e in it.errors:
                    out.append("  error: " + e)
                for ns in it.unchecked:
                    out.append(f"  unchecked: {ns}" + ("  (--strict)" if self.strict else ""))
                for w in it.warnings:
                    out.append("  warning: " + w + ("  (--strict)" if self.strict else ""))
                continue
            notes = [f"  unchecked: {ns}" for ns in it.unchecked] + \
                [f"  warning: {w}" for w in it.warnings]
            if notes or not quiet:
                out.append(("ok   " if it.kind != "stream" else "note ") + it.label)
                out.extend(notes)
        headers = sum(1 for i in self.items if i.kind == "header")
        elements = sum(1 for i in self.items if i.kind == "element")
        unchecked = sorted({ns for i in self.items for ns in i.unchecked})
        out.append(f"{headers} stream header(s), {elements} element(s): "
                   f"{len(self.failures)} failed"
                   + (f"; unchecked namespaces: {', '.join(unchecked)}" if unchecked else ""))
        return "\n".join(out)


def shorten(s: str, width: int) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= width else s[:width] + f"... [{len(s)} chars]"


# --------------------------------------------------------------------------
# Splitting a stream into headers and top-level elements
# --------------------------------------------------------------------------

_NAME = re.compile(r"[^\s/>=]+")
_ATTR = re.compile(r"""([^\s=/>]+)\s*=\s*("[^"]*"|'[^']*')""")
_ENTITY = re.compile(r"&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);")
_PREDEF = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def unescape(v: str) -> str:
    def sub(m):
        e = m.group(1)
        if e.startswith("#x"):
            return chr(int(e[2:], 16))
        if e.startswith("#"):
            return chr(int(e[1:]))
        return _PREDEF[e]
    return _ENTITY.sub(sub, v)


def parse_start_tag(tag: str) -> tuple[str, list[tuple[str, str]]]:
    """('prefix:name', [(attr, value)...]) of a start tag '<...>' or '<.../>'."""
    m = _NAME.match(tag, 1)
    name = m.group(0) if m else ""
    body = tag[1 + len(name):].rstrip(">").rstrip("/")
    return name, [(a, unescape(v[1:-1])) for a, v in _ATTR.findall(body)]


def ns_decls(attrs) -> dict[str, str]:
    """Namespace declarations of a start tag: prefix ('' = default) -> URI."""
    out = {}
    for a, v in attrs:
        if a == "xmlns":
            out[""] = v
        elif a.startswith("xmlns:"):
            out[a[6:]] = v
    return out


def resolve(qname: str, decls: dict[str, str]) -> tuple[str | None, str]:
    prefix, _, local = qname.rpartition(":")
    if prefix == "xml":
        return NS_XML, local
    return decls.get(prefix), local


@dataclass
class _Header:
    item: Item
    decls: dict[str, str]
    attrs: list[tuple[str, str]]
    name: str
    xmldecl: str | None


@dataclass
class _Element:
    item: Item
    header: _Header


def _tag_end(s: str, i: int) -> int:
    """Index just past the '>' closing the tag that starts at s[i] ('<'); -1 if none."""
    quote = None
    j = i + 1
    n = len(s)
    while j < n:
        c = s[j]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == ">":
            return j + 1
        j += 1
    return -1


def split_stream(text: str, report: Report) -> tuple[list[_Header], list[_Element]]:
    """Cut the input into stream headers and complete top-level elements.

    Structural faults (text at stream level, comments, mismatched tags, data
    after </stream:stream>) become 'stream' items with errors.
    """
    headers: list[_Header] = []
    elements: list[_Element] = []
    stack: list[str] = []          # open element names; stack[0] is the stream tag
    header: _Header | None = None
    closed = False
    pending_xmldecl: str | None = None
    elem_start = -1
    pos, n = 0, len(text)

    newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_of(p: int) -> int:
        return bisect.bisect_left(newlines, p) + 1

    def fault(p: int, msg: str, snippet: str) -> None:
        report.items.append(Item("stream", 0, p, line_of(p), snippet, errors=[msg]))

    while pos < n:
        lt = text.find("<", pos)
        if lt < 0:
            lt = n
        if lt > pos:                                   # character data
            chunk = text[pos:lt]
            if len(stack) <= 1 and chunk.strip():
                where = "after </stream:stream>" if closed else "at stream level"
                fault(pos, f"character data {where} (only whitespace keepalives are allowed)",
                      chunk.strip())
            pos = lt
            continue
        if text.startswith("<!--", pos):
            end = text.find("-->", pos)
            end = n if end < 0 else end + 3
            fault(pos, "XML comment (RFC 6120 11.1: restricted XML)", text[pos:end])
            pos = end
            continue
        if text.startswith("<![CDATA[", pos):
            end = text.find("]]>", pos)
            end = n if end < 0 else end + 3
            if len(stack) <= 1:
                fault(pos, "CDATA section at stream level", text[pos:end])
            pos = end
            continue
        if text.startswith("<!", pos):
            end = _tag_end(text, pos)
            end = n if end < 0 else end
            fault(pos, "DTD / markup declaration (RFC 6120 11.1: restricted XML)", text[pos:end])
            pos = end
            continue
        if text.startswith("<?", pos):
            end = text.find("?>", pos)
            end = n if end < 0 else end + 2
            pi = text[pos:end]
            if pi.startswith("<?xml") and (pi[5:6].isspace() or pi[5:6] == "?") and len(stack) <= 1:
                pending_xmldecl = pi                   # start of a (re)started stream
            else:
                fault(pos, "processing instruction (RFC 6120 11.1: restricted XML)", pi)
            pos = end
            continue
        end = _tag_end(text, pos)
        if end < 0:                                    # truncated inside a tag
            if len(stack) >= 1:
                _truncated(report, text, pos if len(stack) == 1 else elem_start, line_of, stack)
            break
        tag = text[pos:end]
        if tag.startswith("</"):
            name = tag[2:-1].strip()
            if not stack or stack[-1] != name:
                fault(pos, f"end tag </{name}> does not match "
                      + (f"<{stack[-1]}>" if stack else "any open element"), tag)
                if name in stack:
                    del stack[stack.index(name):]
            else:
                stack.pop()
                if len(stack) == 1 and header is not None:
                    raw = text[elem_start:end]
                    elements.append(_Element(Item("element", 0, elem_start, line_of(elem_start), raw),
                                             header))
                elif not stack:
                    closed = True
            pos = end
            continue
        # start tag
        name, attrs = parse_start_tag(tag)
        empty = tag.endswith("/>")
        decls = ns_decls(attrs)
        is_header = False
        if len(stack) <= 1:
            scope = dict(header.decls) if (header and stack) else {}
            scope.update(decls)
            ns, local = resolve(name, scope)
            is_header = (local == "stream" and ns == NS_STREAM) or (not stack and not empty)
        if is_header:
            if closed:
                fault(pos, "stream header after </stream:stream>", tag)
            closed = False
            item = Item("header", 0, pos, line_of(pos), tag)
            item.ns, item.name = resolve(name, decls)
            header = _Header(item, decls, attrs, name, pending_xmldecl)
            headers.append(header)
            stack = [name]
            pending_xmldecl = None
            if empty:
                fault(pos, "empty-element stream header (<stream:stream/>)", tag)
                stack = []
                closed = True
            pos = end
            continue
        if not stack:
            fault(pos, "element outside any stream", tag)
            pos = end
            continue
        if pending_xmldecl is not None:
            fault(pos, "XML declaration in the middle of a stream", pending_xmldecl)
            pending_xmldecl = None
        if len(stack) == 1:
            elem_start = pos
        if empty:
            if len(stack) == 1:
                elements.append(_Element(Item("element", 0, pos, line_of(pos), tag), header))
        else:
            stack.append(name)
        pos = end
    else:
        if len(stack) > 1:
            _truncated(report, text, elem_start, line_of, stack)
    if pending_xmldecl is not None:
        report.items.append(Item("stream", 0, n, line_of(n), pending_xmldecl,
                                 warnings=["XML declaration without a stream header (truncated?)"]))
    return headers, elements


def _truncated(report: Report, text: str, start: int, line_of, stack: list[str]) -> None:
    what = f"top-level element <{stack[1]}>" if len(stack) > 1 else "a tag at stream level"
    report.items.append(Item("stream", 0, start, line_of(start), text[start:],
                             warnings=[f"input ends inside {what} (truncated; not validated)"]))


# --------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------

class Catalog:
    """namespace -> schema file and its global element names, read from all.xsd."""

    def __init__(self, schema_dir: Path):
        self.dir = Path(schema_dir)
        self.all = self.dir / "all.xsd"
        if not self.all.is_file():
            raise SetupError(f"{self.all} not found")
        self.files: dict[str, Path] = {}
        self.globals: dict[str, set[str]] = {}
        root = ET.parse(self.all).getroot()
        for imp in root.iter(f"{{{NS_XS}}}import"):
            ns, loc = imp.get("namespace"), imp.get("schemaLocation")
            path = self.dir / loc
            self.files[ns] = path
            sroot = ET.parse(path).getroot()
            self.globals[ns] = {e.get("name") for e in sroot.findall(f"{{{NS_XS}}}element")}

    def has(self, ns: str | None) -> bool:
        return ns in self.files


def find_xmllint() -> str:
    exe = shutil.which("xmllint")
    if not exe:
        raise SetupError("xmllint not found (Debian/Ubuntu: apt-get install -y libxml2-utils)")
    return exe


def run_xmllint(schema: Path, docs: list[str]) -> list[list[str] | None]:
    """Validate each document against schema in one xmllint run.

    Returns, per document, None when it validates, else xmllint's messages.
    """
    if not docs:
        return []
    exe = find_xmllint()
    with tempfile.TemporaryDirectory(prefix="schema_check.") as tmp:
        paths = []
        for i, doc in enumerate(docs):
            p = os.path.join(tmp, f"{i:05d}.xml")
            with open(p, "w", encoding="utf-8") as f:
                f.write(doc)
            paths.append(p)
        proc = subprocess.run([exe, "--noout", "--nonet", "--schema", str(schema), *paths],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace")
        out = proc.stdout
        if "failed to compile" in out or "Schemas parser error" in out:
            raise SetupError(f"schema {schema} does not compile:\n{out}")
        msgs: dict[str, list[str]] = {p: [] for p in paths}
        verdict: dict[str, bool] = {}
        current = None
        for line in out.splitlines():
            hit = next((p for p in paths if line.startswith(p)), None)
            if hit is None:
                if current is not None and line.strip():
                    msgs[current].append(line)
                continue
            current = hit
            rest = line[len(hit):]
            if rest == " validates":
                verdict[hit] = True
            elif rest == " fails to validate":
                verdict[hit] = False
            else:
                msgs[hit].append("line " + rest[1:] if rest.startswith(":") else rest.strip())
        results = []
        for p in paths:
            if verdict.get(p) is True and not msgs[p]:
                results.append(None)
            else:
                results.append(msgs[p] or ["xmllint rejected the element (no message)"])
        return results


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def with_inherited_decls(raw: str, inherited: dict[str, str]) -> str:
    """raw with the inherited namespace declarations it does not redeclare added to its start tag."""
    name, attrs = parse_start_tag(raw[:_tag_end(raw, 0)])
    own = ns_decls(attrs)
    extra = "".join(
        f" xmlns{':' + p if p else ''}=\"{quote_attr(v)}\""
        for p, v in inherited.items() if p not in own)
    cut = 1 + len(name)
    return raw[:cut] + extra + raw[cut:]


def quote_attr(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def check_header(h: _Header, previous_ids: set[str], content_ns: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a stream header the server sent (RFC 6120 4.7, 4.8)."""
    errs, warns = [], []
    attrs = dict(h.attrs)
    if h.xmldecl:
        m = re.search(r"""encoding\s*=\s*['"]([^'"]*)['"]""", h.xmldecl)
        if m and m.group(1).upper() != "UTF-8":
            errs.append(f"XML declaration names encoding {m.group(1)!r} (RFC 6120 11.6: UTF-8 only)")
        m = re.search(r"""version\s*=\s*['"]([^'"]*)['"]""", h.xmldecl)
        if not m or m.group(1) != "1.0":
            errs.append(f"XML declaration without version='1.0': {h.xmldecl}")
    prefix, _, local = h.name.rpartition(":")
    if local != "stream":
        errs.append(f"stream header element is <{h.name}>, not <stream>")
    if h.decls.get(prefix) != NS_STREAM:
        errs.append(f"stream element namespace is {h.decls.get(prefix)!r}, "
                    f"expected {NS_STREAM!r} (RFC 6120 4.8.1)")
    if prefix != "stream":
        warns.append(f"stream prefix is {prefix!r}, not the customary 'stream' (RFC 6120 4.8.5)")
    if h.decls.get("") != content_ns:
        errs.append(f"default namespace is {h.decls.get('')!r}, expected {content_ns!r} (RFC 6120 4.8.2)")
    if attrs.get("version") != "1.0":
        errs.append(f"version is {attrs.get('version')!r}, expected '1.0' (RFC 6120 4.7.5)")
    if not attrs.get("from"):
        errs.append("no 'from' attribute in the response stream header (RFC 6120 4.7.1)")
    sid = attrs.get("id")
    if not sid:
        errs.append("no 'id' attribute in the response stream header (RFC 6120 4.7.3)")
    elif sid in previous_ids:
        errs.append(f"stream id {sid!r} reused after a stream restart "
                    "(RFC 6120 4.7.3: stream ids are unique; a restarted stream gets a new one)")
    if "xml:lang" not in attrs:
        errs.append("no 'xml:lang' attribute in the response stream header (RFC 6120 4.7.4)")
    return errs, warns


def header_document(h: _Header) -> str:
    """The header as a complete empty <stream:stream/> document, for attribute validation."""
    tag = h.item.raw
    return tag[:-1].rstrip("/") + "/>" if tag.endswith(">") else tag


def tree_checks(el: _Element, doc: str, catalog: Catalog, content_ns: str) -> bool:
    """Top-level placement, undeclared payload roots, and namespaces without schema.

    False when doc is not well-formed (left for xmllint to report).
    """
    it = el.item
    try:
        root = ET.fromstring(doc)
    except ET.ParseError:
        it.name = parse_start_tag(it.raw[:_tag_end(it.raw, 0)])[0]
        return False
    unchecked: list[str] = []

    def split(tag: str) -> tuple[str | None, str]:
        if tag.startswith("{"):
            ns, _, local = tag[1:].partition("}")
            return ns, local
        return None, tag

    ns, local = split(root.tag)
    it.ns, it.name = ns, local
    if catalog.has(ns):
        if (ns, local) not in TOP_LEVEL and not (ns == content_ns and local in STANZAS):
            it.errors.append(f"<{local}> in {ns} is not allowed as a top-level stream element")
    else:
        unchecked.append(ns if ns is not None else "(no namespace)")

    def walk(parent: ET.Element, pns: str | None) -> None:
        for child in parent:
            if not isinstance(child.tag, str):
                continue
            cns, clocal = split(child.tag)
            if cns != pns:
                if catalog.has(cns):
                    if clocal not in catalog.globals[cns]:
                        it.errors.append(
                            f"<{clocal}> (inside <{split(parent.tag)[1]}>) is not declared in "
                            f"{catalog.files[cns].name}, the schema of {cns}")
                else:
                    label = cns if cns is not None else "(no namespace)"
                    if label not in unchecked:
                        unchecked.append(f"{label}")
            walk(child, cns)

    walk(root, ns)
    it.unchecked.extend(u for u in unchecked if u not in it.unchecked)
    return True


def validate_text(text: str, *, strict: bool = False, schema_dir: Path = DEFAULT_SCHEMAS,
                  content_ns: str = NS_CLIENT) -> Report:
    report = Report(strict=strict)
    catalog = Catalog(schema_dir)
    headers, elements = split_stream(text, report)
    if not headers:
        report.items.append(Item("stream", 0, 0, 1, text[:200], errors=["no stream header found"]))

    # Header checks (Python rules) and schema documents.
    seen_ids: set[str] = set()
    docs: list[str] = []
    owners: list[Item] = []
    for h in headers:
        errs, warns = check_header(h, seen_ids, content_ns)
        h.item.errors.extend(errs)
        h.item.warnings.extend(warns)
        if dict(h.attrs).get("id"):
            seen_ids.add(dict(h.attrs)["id"])
        docs.append(header_document(h))
        owners.append(h.item)
    for el in elements:
        doc = with_inherited_decls(el.item.raw, el.header.decls)
        well_formed = tree_checks(el, doc, catalog, content_ns)
        if not well_formed or catalog.has(el.item.ns):
            docs.append(doc)          # xmllint also reports well-formedness errors
            owners.append(el.item)
    for item, msgs in zip(owners, run_xmllint(catalog.all, docs)):
        if msgs:
            item.errors.extend(msgs)

    # Present everything in input order.
    everything = [h.item for h in headers] + [e.item for e in elements] + report.items
    everything.sort(key=lambda i: i.pos)
    for k, it in enumerate(everything, 1):
        it.index = k
    report.items = everything
    return report


def validate_bytes(data: bytes, **kw) -> Report:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        report = Report(strict=kw.get("strict", False))
        report.items.append(Item("stream", 0, e.start, data.count(b"\n", 0, e.start) + 1,
                                 repr(data[max(0, e.start - 20):e.end + 20]),
                                 errors=[f"not UTF-8 (RFC 6120 11.6): {e}"]))
        text = data.decode("utf-8", errors="replace")
        rest = validate_text(text, **kw)
        report.items.extend(rest.items)
        return report
    return validate_text(text, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="captured server output ('-' for stdin)")
    ap.add_argument("--strict", action="store_true",
                    help="namespaces without a schema and truncated elements fail too")
    ap.add_argument("--quiet", "-q", action="store_true", help="print only problems and the summary")
    ap.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS,
                    help=f"schema folder holding all.xsd (default {DEFAULT_SCHEMAS})")
    ap.add_argument("--content-ns", default=NS_CLIENT,
                    help="the stream's content namespace (default jabber:client)")
    args = ap.parse_args(argv)
    status = 0
    for name in args.files:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        try:
            report = validate_bytes(data, strict=args.strict, schema_dir=args.schemas,
                                    content_ns=args.content_ns)
        except SetupError as e:
            print(f"schema_check: {e}", file=sys.stderr)
            return 2
        if len(args.files) > 1:
            print(f"== {name}")
        print(report.render(quiet=args.quiet))
        if not report.ok:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
