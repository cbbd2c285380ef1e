// The auditor's page (/ui). Served as a file of its own: the page's CSP runs no inline script.
"use strict";

// --- markup: every value interpolated into html`...` is escaped, whatever its type, unless it
// is itself markup built by html`...`. Nothing else is ever assigned to innerHTML (setHtml), so
// no value a server sends (a height, a size, an index, a name) can become markup.
class Html { constructor(s) { this.s = s; } }
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const piece = (v) => (v instanceof Html ? v.s : Array.isArray(v) ? v.map(piece).join("") : esc(v));
function html(strings, ...values) { let out = strings[0]; values.forEach((v, i) => { out += piece(v) + strings[i + 1]; }); return new Html(out); }
function setHtml(el, h) { if (!(h instanceof Html)) throw new Error("setHtml takes html`...` only"); el.innerHTML = h.s; }

// --- bytes and hashes (WebCrypto: available on https and on localhost) ---
const enc = new TextEncoder();
const $ = (id) => document.getElementById(id);
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const unhex = (s) => { if (!/^([0-9a-f]{2})*$/i.test(s)) throw new Error("not hex: " + s); return Uint8Array.from(s.match(/../g) || [], (h) => parseInt(h, 16)); };
const hex = (u) => Array.from(u, (b) => b.toString(16).padStart(2, "0")).join("");
const cat = (...parts) => { const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0)); let o = 0; for (const p of parts) { out.set(p, o); o += p.length; } return out; };
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// A ledger leaf is an entry in bincode's standard encoding (ledger/src/entry.rs): integers as
// varints (below 251: one byte; 251/252/253: a little-endian u16/u32/u64 follows), strings and
// byte vectors as a varint length and the bytes, Option as a 0/1 tag, enum variants as a varint
// index, [u8; 32] as 32 bytes. What the page shows as proven is compared field by field with
// the decoded entry, never searched for as a substring of the leaf.
function decodeLeaf(leaf) {
  let at = 0;
  const need = (n) => { if (at + n > leaf.length) throw new Error("the proven entry is cut short"); const s = leaf.subarray(at, at + n); at += n; return s; };
  const le = (b) => b.reduceRight((acc, x) => (acc << 8n) | BigInt(x), 0n);
  const big = () => { const t = need(1)[0]; if (t < 251) return BigInt(t); if (t === 251) return le(need(2)); if (t === 252) return le(need(4)); if (t === 253) return le(need(8)); throw new Error("the proven entry has an integer tag " + t); };
  const num = () => { const v = big(); if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error("the proven entry has an integer out of range"); return Number(v); };
  const bytes = () => need(num());
  const str = () => new TextDecoder("utf-8", { fatal: true }).decode(bytes());
  const opt = (f) => { const t = need(1)[0]; if (t === 0) return null; if (t === 1) return f(); throw new Error("the proven entry has an option tag " + t); };
  const kinds = ["node_added", "node_removed", "publisher_added", "publisher_removed", "image_registered", "image_revoked", "audit"];
  const type = kinds[num()];
  let e;
  switch (type) {
    case "node_added": e = { id: num(), site: str(), public_key: need(32) }; break;
    case "node_removed": e = { id: num() }; break;
    case "publisher_added": e = { id: str(), public_key: need(32), by: str() }; break;
    case "publisher_removed": e = { id: str(), by: str() }; break;
    case "image_registered": e = { name: str(), digest: str(), publisher: str() }; break;
    case "image_revoked": e = { digest: str(), reason: str(), by: str() }; break;
    case "audit": {
      const n = num();
      if (n > leaf.length) throw new Error("the proven entry claims too many records");
      const records = [];
      for (let i = 0; i < n; i++) {
        records.push({ actor: str(), node: num(), ns: str(), key: opt(str), key_hash: opt(str), action: str(), result: str(), status: num(), time_ms: num(), instance: big(), seq: num() });
      }
      e = { records };
      break;
    }
    default: throw new Error("the proven entry is of an unknown type");
  }
  e.type = type;
  return e; // the author and signature follow; the node's rules checked them, the proof binds them
}

// Whether a record as the node shows it is, field by field, one of the proven entry's records.
function sameRecord(shown, proven) {
  return shown.actor === proven.actor && shown.node === proven.node && shown.ns === proven.ns
    && (shown.key ?? null) === proven.key && (shown.key_hash ?? null) === proven.key_hash
    && shown.action === proven.action && shown.result === proven.result && shown.status === proven.status
    && shown.time === new Date(proven.time_ms).toISOString() && shown.seq === proven.seq
    && typeof shown.instance === "number" && shown.instance === Number(proven.instance);
}
const canVerify = () => !!(window.crypto && crypto.subtle);
async function sha256(u) { return new Uint8Array(await crypto.subtle.digest("SHA-256", u)); }
async function ed25519Verify(pub, sig, msg) {
  const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, sig, msg);
}

// --- C2SP signed notes and checkpoints ---
function parseNote(note) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("no blank line before the signatures");
  const text = note.slice(0, split + 1);
  const sigs = note.slice(split + 2).split("\n").filter((l) => l.length > 0).map((line) => {
    if (!line.startsWith("\u2014 ")) throw new Error("a signature line must start with '— '");
    const [name, sig] = line.slice(2).split(" ");
    const blob = b64(sig);
    if (blob.length < 5) throw new Error("a signature is too short");
    return { name, keyId: blob.slice(0, 4), sig: blob.slice(4) };
  });
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("malformed checkpoint");
  return { text, sigs, origin: lines[0], size: Number(lines[1]), root: b64(lines[2]) };
}
async function keyId(name, pub) { return (await sha256(cat(enc.encode(name), new Uint8Array([0x0a, 0x01]), pub))).slice(0, 4); }
// Signatures by keys not pinned are ignored; a pinned key whose signature fails rejects the note.
async function verifyNote(note, trust, min) {
  const n = parseNote(note);
  if (trust.origin && n.origin !== trust.origin) throw new Error(`origin ${n.origin} is not the pinned ${trust.origin}`);
  const signed = [];
  const keysSeen = []; // signatures count by key: one key pinned under two names is one signer
  const lines = [];
  for (const s of n.sigs) {
    let pinned = null;
    for (const k of trust.keys) if (k.name === s.name && eq(await keyId(k.name, k.key), s.keyId)) pinned = k;
    if (!pinned) { lines.push({ name: s.name, state: "not pinned (ignored)" }); continue; }
    if (!(await ed25519Verify(pinned.key, s.sig, enc.encode(n.text)))) throw new Error(`the signature of ${s.name} does not verify`);
    const hex = Array.from(pinned.key, (b) => b.toString(16).padStart(2, "0")).join("");
    if (!keysSeen.includes(hex)) { keysSeen.push(hex); signed.push(s.name); }
    lines.push({ name: s.name, state: "valid" });
  }
  if (signed.length < min) throw new Error(`signed by ${signed.length} pinned key(s); ${min} required`);
  return { ...n, signed, lines };
}
// RFC 9162, 2.1.3.2: the root from a leaf hash and its audit path.
async function verifyInclusion(index, size, leafHash, path, root) {
  if (index >= size) return false;
  let fn = index, sn = size - 1, r = leafHash;
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(cat(new Uint8Array([1]), p, r));
      if (fn % 2 === 0) { while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
    } else {
      r = await sha256(cat(new Uint8Array([1]), r, p));
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && eq(r, root);
}
// A leaf (base64) proven in the verified checkpoint `cp` by `proof` (the API's inclusion_proof).
async function provenLeaf(leafB64, proof, cp) {
  if (proof.tree_size !== cp.size || hex(cp.root) !== proof.root_hash) throw new Error("the proof is for another tree than the checkpoint");
  const leaf = b64(leafB64);
  const ok = await verifyInclusion(proof.log_index, proof.tree_size, await sha256(cat(new Uint8Array([0]), leaf)), proof.hashes.map(unhex), cp.root);
  if (!ok) throw new Error(`the inclusion proof of entry ${proof.log_index} does not verify`);
  return leaf;
}

// --- what this browser trusts: pinned keys and the signatures required (localStorage) ---
// Only the person at the browser changes them: the keys textarea, the genesis button, the
// number field, or accepting what a link offers (`offerFromLink`) after seeing it.
const TRUST_KEY = "edgefabric.trust";
const MIN_KEY = "edgefabric.min";
const DEFAULT_MIN = 2;
// A trust.json document, checked: nodes with integer ids and 32-byte base64 keys, an origin.
function parseTrust(json) {
  const t = JSON.parse(json);
  if (!t || !Array.isArray(t.nodes) || t.nodes.length === 0) throw new Error("nodes: a non-empty list is needed");
  for (const n of t.nodes) {
    if (!Number.isInteger(n.id)) throw new Error("nodes: each needs an integer id");
    let k; try { k = b64(n.public_key); } catch (e) { k = []; }
    if (k.length !== 32) throw new Error(`nodes: node ${n.id}'s public_key is not 32 bytes of base64`);
  }
  if (t.origin != null && typeof t.origin !== "string") throw new Error("origin: a string is needed");
  return { nodes: t.nodes.map((n) => ({ id: n.id, public_key: n.public_key })), origin: t.origin || null };
}
function loadTrust() {
  try {
    const t = parseTrust(localStorage.getItem(TRUST_KEY) || "null");
    return { origin: t.origin, keys: t.nodes.map((n) => ({ name: "node-" + n.id, key: b64(n.public_key) })), raw: t };
  } catch (e) { return null; }
}
function saveTrust(t) { localStorage.setItem(TRUST_KEY, JSON.stringify(t)); }
const sameTrust = (a, b) => {
  const canon = (t) => JSON.stringify([t.origin || null, t.nodes.map((n) => [n.id, n.public_key]).sort((x, y) => x[0] - y[0] || (x[1] < y[1] ? -1 : 1))]);
  return canon(a) === canon(b);
};
function storedMin() { const m = Number(localStorage.getItem(MIN_KEY)); return Number.isInteger(m) && m >= 1 ? m : DEFAULT_MIN; }
async function getJson(path, token) {
  const r = await fetch(path, token ? { headers: { Authorization: "Bearer " + token } } : {});
  const body = await r.text();
  let v; try { v = JSON.parse(body); } catch (e) { throw new Error(`${path}: ${r.status}: ${body.slice(0, 200)}`); }
  if (!r.ok) throw new Error(`${path}: ${r.status}: ${(v.error && v.error.message) || body.slice(0, 200)}`);
  return v;
}
function setStatus(cls, label, text) { $("status").className = "badge " + cls; $("status").textContent = label; $("statusText").textContent = text || ""; }
const minSigs = () => { const m = Number($("min").value); return Number.isInteger(m) && m >= 1 ? m : storedMin(); };
let checkpoint = null; // the verified checkpoint, or null

async function refreshCheckpoint() {
  const trust = loadTrust();
  setHtml($("trustSummary"), trust
    ? html`${trust.keys.length} node keys pinned (${trust.keys.map((k) => k.name).join(", ")})${trust.origin ? html`, origin <code>${trust.origin}</code>` : ""}`
    : html`<span class="warn">no keys pinned</span>`);
  if (trust) $("trustJson").value = JSON.stringify(trust.raw, null, 1);
  checkpoint = null;
  let note;
  try { note = await (await fetch("/v1/ledger/checkpoint")).text(); } catch (e) { setStatus("red", "unreachable", String(e)); return; }
  let n;
  try { n = parseNote(note); } catch (e) { setStatus("red", "verification FAILED", "checkpoint: " + e.message); return; }
  const show = (lines, verdict) => {
    setHtml($("checkpoint"), html`<table><tr><th>origin</th><td class="mono">${n.origin}</td></tr>
      <tr><th>tree size</th><td>${n.size} entries</td></tr><tr><th>root</th><td class="mono">${hex(n.root)}</td></tr>
      <tr><th>cosigned by</th><td>${lines.map((l) => html`<div><code>${l.name}</code> <span class="${l.state === "valid" ? "ok" : l.state.startsWith("not") ? "muted" : "bad"}">${l.state}</span></div>`)}</td></tr>
      <tr><th>verdict</th><td>${verdict}</td></tr></table>`);
  };
  if (!canVerify()) { show(n.sigs.map((s) => ({ name: s.name, state: "unchecked" })), html`<span class="warn">not checked</span>`); setStatus("amber", "cannot verify here", "this browser only verifies on https or localhost (WebCrypto)"); return; }
  if (!trust) { show(n.sigs.map((s) => ({ name: s.name, state: "unchecked" })), html`<span class="warn">pin node keys to verify</span>`); setStatus("amber", "no keys pinned", "pin the node keys (trust.json) to verify"); return; }
  try {
    const v = await verifyNote(note, trust, minSigs());
    checkpoint = v;
    show(v.lines, html`<span class="ok">✓ signed by ${v.signed.length} of ${trust.keys.length} pinned nodes (${minSigs()} required)</span>`);
    setStatus("green", "verified", `checkpoint of ${v.size} entries signed by ${v.signed.join(", ")}`);
  } catch (e) {
    show(n.sigs.map((s) => ({ name: s.name, state: "see verdict" })), html`<span class="bad">✗ ${e.message}</span>`);
    setStatus("red", "verification FAILED", e.message);
  }
}

async function lookupImage() {
  const digest = $("digest").value.trim();
  const out = $("imageOut");
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) { setHtml(out, html`<span class="bad">digest: expected sha256: and 64 lower-case hex digits</span>`); return; }
  out.textContent = "checking…";
  try {
    const v = await getJson("/v1/images/" + encodeURIComponent(digest));
    if (v.status === "unknown") { setHtml(out, html`<span class="warn">unknown: the node has no entry for this digest (absence cannot be proven; ask another node)</span>`); return; }
    if (!checkpoint) throw new Error("the checkpoint is not verified (see above)");
    // The image's answer carries its own checkpoint: verify it the same way.
    const cp = await verifyNote(v.checkpoint, loadTrust(), minSigs());
    const leaf = await provenLeaf(v.leaf_base64, v.inclusion_proof, cp);
    const e = decodeLeaf(leaf);
    if ((e.type !== "image_registered" && e.type !== "image_revoked") || e.digest !== digest) throw new Error("the proven entry does not register or revoke this digest");
    if ((e.type === "image_revoked") !== (v.status === "revoked")) throw new Error(`the node says ${v.status}, the proven entry is ${e.type}`);
    // What is shown comes from the proven entry, not from the node's description of it.
    const kind = e.type === "image_revoked" ? html`<span class="bad">REVOKED</span>` : html`<span class="ok">✓ registered</span>`;
    setHtml(out, html`${kind} — entry ${v.inclusion_proof.log_index} proven in the checkpoint of ${cp.size} entries signed by ${cp.signed.join(", ")}
      <pre class="mono">${JSON.stringify(e, null, 1)}</pre>`);
  } catch (e) { setHtml(out, html`<span class="bad">✗ ${e.message}</span>`); }
}

async function queryAudit() {
  const out = $("auditOut");
  const token = $("token").value.trim();
  if (!token) { setHtml(out, html`<span class="warn">an auditor token is needed</span>`); return; }
  const q = new URLSearchParams();
  for (const [k, id] of [["ns", "fNs"], ["actor", "fActor"], ["action", "fAction"], ["result", "fResult"], ["from", "fFrom"], ["to", "fTo"]]) { const x = $(id).value.trim(); if (x) q.set(k, x); }
  q.set("limit", "200");
  out.textContent = "checking…";
  try {
    const v = await getJson("/v1/audit?" + q, token);
    const cp = await verifyNote(v.checkpoint, loadTrust(), minSigs());
    let good = 0;
    const rows = [];
    for (const r of v.records) {
      let mark;
      try {
        const e = v.entries[String(r.log_index)];
        if (!e) throw new Error("no proof");
        const leaf = await provenLeaf(e.leaf_base64, e.inclusion_proof, cp);
        const proven = decodeLeaf(leaf);
        if (proven.type !== "audit" || !proven.records.some((p) => sameRecord(r, p))) throw new Error("the proven entry does not hold this record");
        mark = html`<span class="ok">✓</span>`; good++;
      } catch (err) { mark = html`<span class="bad" title="${err.message}">✗ ${err.message}</span>`; }
      rows.push(html`<tr><td>${mark}</td><td>${r.time}</td><td>${r.node}</td><td>${r.actor}</td><td>${r.action}</td>
        <td>${r.ns}</td><td class="mono">${r.key != null ? r.key : (r.key_hash || "")}</td><td>${r.result}</td><td>${r.status === 0 ? "received" : r.status}</td><td>${r.log_index}</td></tr>`);
    }
    const verdict = good === v.records.length
      ? html`<span class="ok">✓ ${good} records proven in the checkpoint of ${cp.size} entries (signed by ${cp.signed.join(", ")})</span>`
      : html`<span class="bad">✗ ${v.records.length - good} of ${v.records.length} records did not verify</span>`;
    setHtml(out, html`${verdict}${v.next ? html` <span class="muted">(more: narrow the filters)</span>` : ""}
      <table><tr><th></th><th>time</th><th>node</th><th>actor</th><th>action</th><th>ns</th><th>key</th><th>result</th><th>status</th><th>entry</th></tr>${rows}</table>`);
  } catch (e) { setHtml(out, html`<span class="bad">✗ ${e.message}</span>`); }
}

async function loadBlocks() {
  try {
    const st = await getJson("/v1/ledger/status");
    const height = Number(st.height);
    if (!Number.isSafeInteger(height) || height < 0) throw new Error(`/v1/ledger/status: height ${JSON.stringify(st.height)} is not a block height`);
    const rows = [];
    for (let h = height; h >= 0 && h > height - 12; h--) {
      const b = await getJson("/v1/ledger/blocks/" + h);
      const entries = Array.isArray(b.entries) ? b.entries : [];
      const kinds = [...new Set(entries.map((e) => e.type))].join(", ");
      const time = Number.isFinite(b.time_ms) && Math.abs(b.time_ms) < 8.64e15 ? new Date(b.time_ms).toISOString() : String(b.time_ms);
      const last = Number.isSafeInteger(b.first_index) && Number.isSafeInteger(b.entry_count) ? b.first_index + b.entry_count - 1 : "?";
      rows.push(html`<tr><td>${b.height}</td><td>${time}</td><td>${b.entry_count} (${kinds})</td>
        <td>node-${b.proposer}</td><td class="mono">${String(b.hash).slice(0, 16)}…</td>
        <td><details><summary>entries ${b.first_index}–${last}</summary><pre class="mono">${JSON.stringify(entries, null, 1)}</pre></details></td></tr>`);
    }
    setHtml($("blocks"), html`<div class="muted">${st.log_size} entries in ${height + 1} blocks; this node's stored ledger: ${typeof st.health === "string" ? st.health : JSON.stringify(st.health)}. Newest first.</div>
      <table><tr><th>height</th><th>time</th><th>entries</th><th>proposer</th><th>hash</th><th></th></tr>${rows}</table>`);
  } catch (e) { setHtml($("blocks"), html`<span class="bad">${e.message}</span>`); }
}

// --- a link's fragment (never sent to the server) can carry the inputs:
// #trust=<base64 of trust.json>&min=2&digest=sha256:…&token=…&ns=…
// The digest, token and namespace are filled in and looked up. What would weaken the checks —
// keys other than the pinned ones, or fewer signatures than required now — is only offered:
// the page shows what the link asks for and changes nothing until the person accepts it.
// A stricter min is taken for this view without asking.
function offerFromLink(f) {
  const offer = {};
  if (f.get("trust")) {
    // Base64's '+' reads as a space in a query-style fragment: put it back.
    const t = parseTrust(atob(f.get("trust").replace(/ /g, "+")));
    const cur = loadTrust();
    if (!cur || !sameTrust(cur.raw, t)) offer.trust = t;
  }
  if (f.get("min") != null) {
    const m = Number(f.get("min"));
    if (!Number.isInteger(m) || m < 1) throw new Error(`min: ${f.get("min")} is not a positive whole number`);
    if (m < storedMin()) offer.min = m;
    else $("min").value = m;
  }
  return offer.trust || offer.min ? offer : null;
}
function showOffer(offer) {
  const cur = loadTrust();
  const parts = [];
  if (offer.trust) {
    parts.push(html`<div>It asks to pin ${offer.trust.nodes.length} node key(s)${offer.trust.origin ? html` for origin <code>${offer.trust.origin}</code>` : ""},
      ${cur ? html`<b>replacing the ${cur.keys.length} key(s) pinned in this browser</b>` : "with none pinned in this browser yet"}:</div>
      <table>${offer.trust.nodes.map((n) => html`<tr><td>node-${n.id}</td><td class="mono">${n.public_key}</td></tr>`)}</table>`);
  }
  if (offer.min) parts.push(html`<div>It asks to <b>lower the signatures required from ${storedMin()} to ${offer.min}</b>.</div>`);
  setHtml($("linkOfferText"), html`${parts}<div class="muted">Nothing from the link is used until you accept. Compare the keys with your
    <code>trust.json</code>: whoever sent the link chose them.</div>`);
  $("linkOffer").hidden = false;
  $("acceptLink").onclick = () => {
    if (offer.trust) saveTrust(offer.trust);
    if (offer.min) { localStorage.setItem(MIN_KEY, String(offer.min)); $("min").value = offer.min; }
    $("linkOffer").hidden = true;
    run();
  };
  $("ignoreLink").onclick = () => { $("linkOffer").hidden = true; };
}

$("saveTrust").onclick = () => { try { saveTrust(parseTrust($("trustJson").value)); refreshCheckpoint(); } catch (e) { alert("trust.json: " + e.message); } };
$("tofu").onclick = async () => {
  try {
    const g = await getJson("/v1/ledger/blocks/0");
    const st = await getJson("/v1/ledger/status");
    saveTrust(parseTrust(JSON.stringify({ nodes: g.entries.filter((e) => e.type === "node_added").map((e) => ({ id: e.id, public_key: e.public_key })), origin: st.origin })));
    refreshCheckpoint();
  } catch (e) { alert(e.message); }
};
$("min").onchange = () => { const m = Number($("min").value); if (Number.isInteger(m) && m >= 1) localStorage.setItem(MIN_KEY, String(m)); refreshCheckpoint(); };
$("lookup").onclick = lookupImage;
$("auditGo").onclick = queryAudit;

// One pass over everything shown; `data-ready` counts the passes finished.
async function run() {
  await refreshCheckpoint();
  await loadBlocks();
  if ($("digest").value) await lookupImage();
  if ($("token").value) await queryAudit();
  document.body.dataset.ready = String(Number(document.body.dataset.ready || 0) + 1);
}
(async () => {
  $("min").value = storedMin();
  const f = new URLSearchParams(location.hash.slice(1));
  let offer = null;
  try { offer = offerFromLink(f); } catch (e) {
    setHtml($("linkOfferText"), html`<div class="bad">This link's inputs were not used: ${e.message}</div>`);
    $("acceptLink").hidden = true;
    $("linkOffer").hidden = false;
    $("ignoreLink").onclick = () => { $("linkOffer").hidden = true; };
  }
  if (f.get("digest")) $("digest").value = f.get("digest");
  if (f.get("token")) { $("token").value = f.get("token"); if (f.get("ns")) $("fNs").value = f.get("ns"); }
  if (offer) showOffer(offer);
  await run();
})();
