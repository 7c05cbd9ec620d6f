#!/usr/bin/env python3
"""Self-test of validate.py and schemas/: known-good transcripts pass, known-bad output fails.

Run: python3 tests/schema_check/test_validate.py   (or: python3 -m pytest tests/schema_check)
Needs xmllint (Debian: libxml2-utils); without it every test is skipped.
Set SCHEMA_CHECK_LIVE=1 (after `cargo build --bin starling`) to also capture and
validate a fresh transcript from a real server (capture.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import validate  # noqa: E402

SCHEMAS = validate.DEFAULT_SCHEMAS
HAVE_XMLLINT = shutil.which("xmllint") is not None
needs_xmllint = unittest.skipUnless(HAVE_XMLLINT, "xmllint not installed (apt-get install libxml2-utils)")

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' "
          "version='1.0' xml:lang='en'>")
HEADER2 = HEADER.replace("id='s1'", "id='s2'")

# A hand-written but realistic c2s session as the server sends it: STARTTLS
# offered, SASL, restart, bind, roster, presence, disco with an extension form,
# version/time/last/ping, an offline message with delay, a bounced message,
# whitespace keepalives, pretty-printing newlines, and no closing tag.
GOOD_SESSION = HEADER + """
<stream:features>
  <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>
  <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>
    <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>
  </mechanisms>
  <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>
  <register xmlns='http://jabber.org/features/iq-register'/>
</stream:features>
<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0wzcmZjTkhZSlkxWlZ2V1ZzN2oscz1RU1hDUitRNnNlazhiZjkyLGk9NDA5Ng==</challenge>
<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>dj1ybUY5cHFWOFM3c3VBb1pXamE0ZEpSa0ZzS1E9</success>
<?xml version='1.0'?>""" + HEADER2.replace("<?xml version='1.0'?>", "") + """
<stream:features>
  <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>
  <session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>
  <ver xmlns='urn:xmpp:features:rosterver'/>
  <sub xmlns='urn:xmpp:features:pre-approval'/>
  <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://starling.im' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/>
</stream:features>
<iq id='b1' type='result'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@localhost/phone</jid></bind></iq>
<iq id='r1' type='result' to='alice@localhost/phone'>
  <query xmlns='jabber:iq:roster' ver='3'>
    <item jid='bob@localhost' name='Bob' subscription='both'><group>Friends</group></item>
    <item jid='carol@localhost' subscription='none' ask='subscribe' approved='true'/>
  </query>
</iq>
<iq id='push1' type='set' to='alice@localhost/phone'><query xmlns='jabber:iq:roster' ver='4'><item jid='carol@localhost' subscription='remove'/></query></iq>
 \n \t
<presence from='bob@localhost/laptop' to='alice@localhost/phone' xml:lang='en'>
  <show>away</show><status>lunch</status><priority>-1</priority>
  <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://example.org' ver='abc='/>
</presence>
<iq from='localhost' id='d1' to='alice@localhost/phone' type='result'>
  <query xmlns='http://jabber.org/protocol/disco#info'>
    <identity category='server' type='im' name='Starling'/>
    <feature var='http://jabber.org/protocol/disco#info'/>
    <feature var='urn:xmpp:ping'/>
    <x xmlns='jabber:x:data' type='result'>
      <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/network/serverinfo</value></field>
      <field var='abuse-addresses' type='list-multi'><value>mailto:abuse@localhost</value></field>
    </x>
  </query>
</iq>
<iq from='localhost' id='d2' to='alice@localhost/phone' type='result'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='upload.localhost' name='Upload'/></query></iq>
<iq from='localhost' id='v1' to='alice@localhost/phone' type='result'><query xmlns='jabber:iq:version'><name>Starling</name><version>0.1.0</version><os>Linux</os></query></iq>
<iq from='localhost' id='t1' to='alice@localhost/phone' type='result'><time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>2024-01-01T12:00:00Z</utc></time></iq>
<iq from='localhost' id='l1' to='alice@localhost/phone' type='result'><query xmlns='jabber:iq:last' seconds='903'/></iq>
<iq from='bob@localhost' id='l2' to='alice@localhost/phone' type='result'><query xmlns='jabber:iq:last' seconds='0'>Gone fishing</query></iq>
<iq from='localhost' id='p1' to='alice@localhost/phone' type='result'/>
<iq from='localhost' id='g1' to='alice@localhost/phone' type='get'><ping xmlns='urn:xmpp:ping'/></iq>
<iq id='reg1' type='result'><query xmlns='jabber:iq:register'><registered/><username>alice</username></query></iq>
<message from='bob@localhost/laptop' to='alice@localhost' type='chat' id='m1'>
  <body>hi</body><thread parent='p0'>t1</thread>
  <delay xmlns='urn:xmpp:delay' from='localhost' stamp='2024-01-01T11:59:00.123Z'>Offline Storage</delay>
</message>
<message from='nobody@localhost' to='alice@localhost/phone' type='error' id='m2'>
  <body>hello?</body>
  <error type='cancel' by='localhost'>
    <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>no such user</text>
  </error>
</message>
<iq from='localhost' id='x1' to='alice@localhost/phone' type='error'>
  <query xmlns='urn:example:unknown'/>
  <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>
</iq>
"""

PRELOGIN_ERROR = HEADER + """<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>
<iq id='reg0' type='result'><query xmlns='jabber:iq:register'><instructions>Pick a name</instructions><username/><password/>
<x xmlns='jabber:x:data' type='form'><title>Register</title><field var='username' type='text-single' label='User'><required/></field></x></query></iq>
<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>
<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text xml:lang='en'>bad password</text></failure>
<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>too many failures</text><x xmlns='urn:example:app'/></stream:error>
</stream:stream>"""


def stream(*elements: str, header: str = HEADER) -> str:
    return header + "".join(elements)


def run(text: str, **kw) -> validate.Report:
    return validate.validate_text(text, **kw)


@needs_xmllint
class Schemas(unittest.TestCase):
    def test_every_schema_compiles_and_is_catalogued(self):
        cat = validate.Catalog(SCHEMAS)
        files = {p.name for p in SCHEMAS.glob("*.xsd")} - {"all.xsd"}
        self.assertEqual(files, {p.name for p in cat.files.values()},
                         "every schemas/*.xsd must be imported by all.xsd")
        for f in sorted(files) + ["all.xsd"]:
            proc = subprocess.run(["xmllint", "--noout", "--nonet", "--schema", str(SCHEMAS / f),
                                   "-"], input="<probe/>", capture_output=True, text=True)
            self.assertNotIn("failed to compile", proc.stderr, f)
            self.assertIn("No matching global declaration", proc.stderr, f)

    def test_every_schema_names_its_source(self):
        for p in SCHEMAS.glob("*.xsd"):
            head = p.read_text()[:1500]
            if p.name != "all.xsd":
                self.assertRegex(head, r"Source:\s+(RFC|XEP|W3C)", p.name)
                self.assertRegex(head, r"Namespace:\s+\S+", p.name)

    def test_readme_lists_every_schema(self):
        readme = (SCHEMAS / "README.md").read_text()
        for p in SCHEMAS.glob("*.xsd"):
            self.assertIn(p.name, readme)


@needs_xmllint
class Good(unittest.TestCase):
    def assertValid(self, report: validate.Report):
        self.assertTrue(report.ok, "\n" + report.render(quiet=True))

    def test_realistic_session(self):
        r = run(GOOD_SESSION)
        self.assertValid(r)
        kinds = [i.kind for i in r.items]
        self.assertEqual(kinds.count("header"), 2)
        self.assertEqual(kinds.count("element"), 20)
        # the payload in an unknown namespace is reported, not failed
        self.assertIn("urn:example:unknown", {ns for i in r.items for ns in i.unchecked})

    def test_prelogin_errors_and_closed_stream(self):
        r = run(PRELOGIN_ERROR)
        self.assertValid(r)
        self.assertIn("urn:example:app", {ns for i in r.items for ns in i.unchecked})

    def test_captured_starling_transcripts(self):
        samples = sorted((HERE / "samples").glob("*.xml"))
        self.assertTrue(samples)
        for s in samples:
            with self.subTest(sample=s.name):
                self.assertValid(validate.validate_bytes(s.read_bytes()))

    def test_truncated_stream_is_fine_but_not_strict(self):
        text = stream("<iq id='a' type='result'/>", "<message><body>cut of")
        r = run(text)
        self.assertValid(r)
        self.assertTrue(any("truncated" in w for i in r.items for w in i.warnings))
        self.assertFalse(run(text, strict=True).ok)

    def test_unchecked_namespace_fails_only_when_strict(self):
        text = stream("<r xmlns='urn:xmpp:sm:3'/>", "<iq id='a' type='result'><q xmlns='urn:x'/></iq>")
        r = run(text)
        self.assertValid(r)
        self.assertEqual(sorted(ns for i in r.items for ns in i.unchecked), ["urn:x", "urn:xmpp:sm:3"])
        self.assertFalse(run(text, strict=True).ok)

    def test_redeclared_prefixes_and_default_namespace(self):
        r = run(stream("<stream:features><b:bind xmlns:b='urn:ietf:params:xml:ns:xmpp-bind'/>"
                       "</stream:features>",
                       "<c:iq xmlns:c='jabber:client' id='a' type='result'/>"))
        self.assertValid(r)

    def test_other_stream_prefix_is_only_a_warning(self):
        h = HEADER.replace("xmlns:stream=", "xmlns:s=").replace("<stream:stream", "<s:stream")
        r = run(h + "<s:features/>")
        self.assertValid(r)
        self.assertTrue(any("prefix" in w for i in r.items for w in i.warnings))

    def test_cli_exit_status(self):
        with tempfile.TemporaryDirectory() as d:
            good, bad = Path(d, "good.xml"), Path(d, "bad.xml")
            good.write_text(GOOD_SESSION)
            bad.write_text(stream("<iq id='1' type='bogus'/>"))
            script = str(HERE / "validate.py")
            ok = subprocess.run([sys.executable, script, "-q", str(good)], capture_output=True, text=True)
            self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
            ko = subprocess.run([sys.executable, script, "-q", str(bad)], capture_output=True, text=True)
            self.assertEqual(ko.returncode, 1, ko.stdout + ko.stderr)
            self.assertIn("bogus", ko.stdout)
            self.assertIn("FAIL", ko.stdout)


@needs_xmllint
class Bad(unittest.TestCase):
    """Each sample must be rejected, with a message naming the problem."""

    def assertRejected(self, text: str, pattern: str, **kw):
        r = run(text, **kw)
        self.assertFalse(r.ok, f"accepted:\n{text}")
        msgs = "\n".join(e for i in r.failures for e in i.errors)
        self.assertRegex(msgs, pattern)

    # stanzas (jabber:client, RFC 6120 A.5)
    def test_iq_type_bogus(self):
        self.assertRejected(stream("<iq id='1' type='bogus'/>"), r"'bogus' is not an element of the set")

    def test_iq_without_id(self):
        self.assertRejected(stream("<iq type='result'/>"), r"attribute 'id' is required")

    def test_iq_with_two_payloads(self):
        self.assertRejected(stream("<iq id='1' type='result'><ping xmlns='urn:xmpp:ping'/>"
                                   "<ping xmlns='urn:xmpp:ping'/></iq>"), r"not expected")

    def test_message_type_unknown(self):
        self.assertRejected(stream("<message type='private'><body>x</body></message>"), r"'private'")

    def test_presence_show_bogus(self):
        self.assertRejected(stream("<presence><show>bogus</show></presence>"), r"'bogus'.*away")

    def test_presence_priority_out_of_range(self):
        self.assertRejected(stream("<presence><priority>200</priority></presence>"), r"priority")

    def test_stanza_error_without_condition(self):
        self.assertRejected(stream("<iq id='1' type='error'><error type='cancel'>"
                                   "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</text>"
                                   "</error></iq>"), r"text.*not expected")

    def test_stanza_error_without_type(self):
        self.assertRejected(stream("<iq id='1' type='error'><error><bad-request "
                                   "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
                            r"attribute 'type' is required")

    def test_stanza_error_unknown_condition(self):
        self.assertRejected(stream("<iq id='1' type='error'><error type='cancel'><payment-required "
                                   "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
                            r"payment-required")

    def test_stanza_error_condition_in_wrong_namespace(self):
        self.assertRejected(stream("<iq id='1' type='error'><error type='cancel'>"
                                   "<bad-request/></error></iq>"), r"bad-request")

    # payloads reached through lax wildcards
    def test_roster_item_subscription_sometimes(self):
        self.assertRejected(stream("<iq id='1' type='result'><query xmlns='jabber:iq:roster'>"
                                   "<item jid='a@b' subscription='sometimes'/></query></iq>"),
                            r"'sometimes' is not an element of the set")

    def test_roster_item_without_jid(self):
        self.assertRejected(stream("<iq id='1' type='result'><query xmlns='jabber:iq:roster'>"
                                   "<item name='x'/></query></iq>"), r"attribute 'jid' is required")

    def test_undeclared_payload_in_known_namespace(self):
        self.assertRejected(stream("<iq id='1' type='result'><items xmlns='jabber:iq:roster'/></iq>"),
                            r"<items> .* not declared in roster.xsd")

    def test_disco_identity_without_category(self):
        self.assertRejected(stream("<iq id='1' type='result'><query xmlns='http://jabber.org/protocol/disco#info'>"
                                   "<identity type='im'/><feature var='x'/></query></iq>"),
                            r"attribute 'category' is required")

    def test_disco_form_in_wrong_place(self):
        self.assertRejected(stream("<iq id='1' type='result'><query xmlns='http://jabber.org/protocol/disco#info'>"
                                   "<x xmlns='jabber:x:data' type='result'/><identity category='server' type='im'/>"
                                   "<feature var='x'/></query></iq>"), r"not expected")

    def test_delay_stamp_not_a_datetime(self):
        self.assertRejected(stream("<message><body>x</body><delay xmlns='urn:xmpp:delay' stamp='yesterday'/>"
                                   "</message>"), r"stamp.*dateTime")

    def test_time_missing_utc(self):
        self.assertRejected(stream("<iq id='1' type='result'><time xmlns='urn:xmpp:time'><tzo>Z</tzo></time></iq>"),
                            r"Missing child element")

    def test_last_seconds_negative(self):
        self.assertRejected(stream("<iq id='1' type='result'><query xmlns='jabber:iq:last' seconds='-5'/></iq>"),
                            r"seconds")

    def test_version_without_name(self):
        self.assertRejected(stream("<iq id='1' type='result'><query xmlns='jabber:iq:version'>"
                                   "<version>1</version></query></iq>"), r"version.*not expected")

    def test_ping_with_content(self):
        self.assertRejected(stream("<iq id='1' type='get'><ping xmlns='urn:xmpp:ping'>x</ping></iq>"), r"ping")

    def test_data_form_bad_field_type(self):
        self.assertRejected(stream("<message><x xmlns='jabber:x:data' type='form'><field var='a' type='text'/>"
                                   "</x></message>"), r"'text' is not an element of the set")

    # stream-level elements
    def test_stream_error_two_texts(self):
        t = "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>x</text>"
        self.assertRejected(stream("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                   + t + t + "</stream:error>"), r"text.*not expected")

    def test_stream_error_without_condition(self):
        self.assertRejected(stream("<stream:error><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>x</text>"
                                   "</stream:error>"), r"not expected")

    def test_stream_error_rfc3920_condition(self):
        self.assertRejected(stream("<stream:error><xml-not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                   "</stream:error>"), r"xml-not-well-formed")

    def test_sasl_failure_unknown_condition(self):
        self.assertRejected(stream("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><bad-password/></failure>"),
                            r"bad-password")

    def test_mechanisms_empty(self):
        self.assertRejected(stream("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
                                   "</stream:features>"), r"Missing child element")

    def test_bind_feature_with_both_children(self):
        self.assertRejected(stream("<iq id='1' type='result'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                   "<resource>r</resource><jid>a@localhost/r</jid></bind></iq>"), r"jid.*not expected")

    def test_channel_binding_without_type(self):
        self.assertRejected(stream("<stream:features><sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>"
                                   "<channel-binding/></sasl-channel-binding></stream:features>"),
                            r"attribute 'type' is required")

    def test_element_not_allowed_at_top_level(self):
        self.assertRejected(stream("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
                            r"not allowed as a top-level")

    # stream headers (RFC 6120 4.7 / 4.8)
    def test_header_wrong_version(self):
        self.assertRejected(stream(header=HEADER.replace("version='1.0' xml", "version='0.9' xml")),
                            r"version is '0.9'")

    def test_header_version_not_decimal(self):
        self.assertRejected(stream(header=HEADER.replace("version='1.0' xml", "version='one' xml")),
                            r"version")

    def test_header_without_id_from_lang(self):
        h = HEADER.replace(" id='s1'", "").replace(" from='localhost'", "").replace(" xml:lang='en'", "")
        r = run(stream(header=h))
        msgs = "\n".join(e for i in r.failures for e in i.errors)
        for what in ("'id'", "'from'", "'xml:lang'"):
            self.assertIn(what, msgs)

    def test_header_bad_language_tag(self):
        self.assertRejected(stream(header=HEADER.replace("xml:lang='en'", "xml:lang='not a tag'")), r"lang")

    def test_header_wrong_content_namespace(self):
        self.assertRejected(stream(header=HEADER.replace("xmlns='jabber:client'", "xmlns='jabber:server'")),
                            r"default namespace")

    def test_header_wrong_stream_namespace(self):
        self.assertRejected(stream(header=HEADER.replace("http://etherx.jabber.org/streams", "urn:wrong")),
                            r"stream element namespace")

    def test_header_id_reused_on_restart(self):
        self.assertRejected(stream("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", HEADER),
                            r"reused")

    def test_header_encoding_not_utf8(self):
        self.assertRejected(HEADER.replace("<?xml version='1.0'?>", "<?xml version='1.0' encoding='latin1'?>"),
                            r"UTF-8")

    # restricted XML and well-formedness
    def test_comment(self):
        self.assertRejected(stream("<!-- hi -->"), r"comment")

    def test_text_at_stream_level(self):
        self.assertRejected(stream("hello"), r"character data")

    def test_mismatched_tags(self):
        self.assertRejected(stream("<message><body>x</message></body>"), r"does not match|mismatch")

    def test_unbound_prefix(self):
        self.assertRejected(stream("<iq id='1' type='result'><x:query/></iq>"), r"[Nn]amespace prefix|prefix")

    def test_not_utf8(self):
        r = validate.validate_bytes(stream("<message><body>").encode() + b"\xff\xfe</body></message>")
        self.assertFalse(r.ok)

    def test_no_header(self):
        self.assertRejected("<iq id='1' type='result'/>", r"stream header|outside any stream")


@unittest.skipUnless(os.environ.get("SCHEMA_CHECK_LIVE") == "1" and HAVE_XMLLINT,
                     "set SCHEMA_CHECK_LIVE=1 after cargo build --bin starling")
class Live(unittest.TestCase):
    def test_capture_and_validate_real_server(self):
        with tempfile.TemporaryDirectory() as d:
            proc = subprocess.run([sys.executable, str(HERE / "capture.py"), "--out", d],
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
