// bestshot gallery: runs (GET /v1/runs), stage-1 curation (/v1/curate/*), progress (/sdapi/v1/progress).
// Plain JS, no build step. A bearer token can be given as index.html#token=SECRET (kept in sessionStorage).
"use strict";
const tokenFromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (tokenFromHash) sessionStorage.setItem("bestshot_token", tokenFromHash);
const token = sessionStorage.getItem("bestshot_token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const $ = (id) => document.getElementById(id);
let runsOffset = 0;

async function api(path, body) {
  const opts = { headers: { ...headers } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : r.status + " " + r.statusText);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function img(url, alt) {
  const i = el("img", { alt, loading: "lazy" });
  if (!token) { i.src = url; return i; }
  fetch(url, { headers }).then((r) => r.blob()).then((b) => { i.src = URL.createObjectURL(b); });
  return i;
}

const fmt = (x) => (x == null ? "–" : Number(x).toFixed(4));

function runCard(run) {
  const ok = run.ok ? "" : ` — not kept: ${run.reason || "?"}`;
  const cands = el("div", { class: "grid" });
  for (const c of run.candidates || []) {
    const best = c.seed === run.best_seed;
    const pic = c.file ? img("/v1/images/" + encodeURIComponent(c.file), `seed ${c.seed}`)
                       : el("div", { class: "noimg" }, "not saved");
    cands.append(el("div", { class: "card cand" + (best ? " best" : ""), "data-testid": "candidate" }, pic,
      el("div", { class: "meta" }, `${best ? "★ " : ""}seed ${c.seed}`, el("br"), `score ${fmt(c.score ?? c.clip)}`)));
  }
  return el("div", { class: "run", "data-testid": "run" },
    el("h3", {}, run.sd_prompt || run.prompt || "(no prompt)"),
    el("div", { class: "meta" + (run.ok ? "" : " bad") },
      `${run.run_id} · ${run.model || ""} · best seed ${run.best_seed ?? "–"} (${run.scorer || "score"} ${fmt(run.best_score ?? run.best_clip)})${ok}`),
    cands);
}

async function loadRuns(append) {
  if (!append) runsOffset = 0;
  const data = await api(`/v1/runs?limit=10&offset=${runsOffset}`);
  const box = $("runs");
  if (!append) box.replaceChildren();
  for (const r of data.runs) box.append(runCard(r));
  runsOffset += data.runs.length;
  if (!box.children.length) box.append(el("p", { class: "empty" }, "no runs yet"));
  $("more").hidden = data.runs.length < 10;
}

async function act(path, body) {
  try { await api(path, body); $("message").textContent = ""; } catch (e) { $("message").textContent = e.message; }
  await loadCuration();
}

function stageCard(item) {
  const url = "/v1/curate/images/stage1/" + encodeURIComponent(item.name);
  const m = item.metadata || {};
  const info = [m.seed != null ? `seed ${m.seed}` : null, (m.score ?? m.clip) != null ? `score ${fmt(m.score ?? m.clip)}` : null]
    .filter(Boolean).join(" · ");
  // every verdict is also a preference row for `bestshot taste train` (star = a stronger keep)
  return el("div", { class: "card" + (item.kept ? " kept" : "") + (item.starred ? " starred" : ""),
                     "data-testid": "stage1-item", "data-name": item.name },
    img(url, item.name), el("div", { class: "meta" }, (item.starred ? "★ " : "") + item.name, el("br"), info),
    el("button", { type: "button", "data-testid": "keep", onclick: () => act("/v1/curate/keep", { name: item.name, keep: !item.kept }) },
      item.kept ? "unkeep" : "keep"),
    el("button", { type: "button", "data-testid": "star", onclick: () => act("/v1/curate/star", { name: item.name, star: !item.starred }) },
      item.starred ? "unstar" : "star"),
    el("button", { type: "button", "data-testid": "delete", onclick: () => act("/v1/curate/delete", { name: item.name }) }, "delete"));
}

async function loadCuration() {
  const data = await api("/v1/curate");
  const box = $("stage1");
  box.replaceChildren(...data.stage1.map(stageCard));
  if (!data.stage1.length) box.append(el("p", { class: "empty" }, "no stage-1 images"));
  $("trash").replaceChildren(...data.trash.map((name) => el("div", { class: "card", "data-testid": "trash-item" },
    el("div", { class: "meta" }, name),
    el("button", { type: "button", "data-testid": "undo", onclick: () => act("/v1/curate/undo", { name }) }, "undo"))));
  $("trash-count").textContent = data.trash.length;
  if (data.trash.length) $("trash-box").open = true;
  $("upscale").disabled = !data.stage1.some((i) => i.kept);
  $("upscale").title = data.upscale_available ? "" : "bestshot.curate is not installed";
}

async function pollProgress() {
  try {
    const p = await api("/sdapi/v1/progress");
    const s = p.state || {};
    $("progress").textContent = s.job
      ? `${s.job}: ${Math.round(p.progress * 100)}% (step ${s.sampling_step}/${s.sampling_steps}, ` +
        `eta ${p.eta_relative.toFixed(1)}s, ${s.job_count} in queue) ${p.textinfo || ""}`
      : `idle · ${(s.bestshot || {}).completed ?? 0} jobs done`;
  } catch (e) { $("progress").textContent = "progress unavailable: " + e.message; }
}

$("refresh").addEventListener("click", () => { loadRuns(false); loadCuration(); });
$("more").addEventListener("click", () => loadRuns(true));
$("upscale").addEventListener("click", async () => {
  try {
    const r = await api("/v1/curate/upscale", {});
    $("message").textContent = `upscale started (${r.job}, ${r.images.length} image(s))`;
  } catch (e) { $("message").textContent = "upscale unavailable: " + e.message; }
});

loadRuns(false).catch((e) => { $("runs").textContent = "cannot load runs: " + e.message; });
loadCuration().catch((e) => { $("stage1").textContent = "cannot load stage 1: " + e.message; });
pollProgress();
setInterval(pollProgress, 1500);
