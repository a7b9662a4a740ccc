// Sendense console: the few things the server cannot do from the page alone.
// Forms with data-api call the JSON API (session cookie + CSRF header) and show
// its message inline; task bars follow the task's events (SSE); charts draw with
// uPlot; times are shown in the browser's zone. No inline script anywhere (CSP).
"use strict";

(function () {
  const NO_LOG = 4611686018427387904; // 2**62: a task's events without its log lines

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      if (el.textContent.trim().endsWith("UTC")) {
        el.textContent = when.toLocaleString();
      } else if (el.closest(".log")) {
        el.textContent = when.toLocaleTimeString();
      }
      el.title = when.toLocaleString();
    });
  }

  // --- forms that call the API -------------------------------------------------
  // A field's name may be a path ("webhook.url": {webhook: {url: ...}}); data-type
  // says how its text becomes JSON: int, float, bool, or list (comma-separated).
  function put(body, name, value) {
    const path = name.split(".");
    let at = body;
    path.slice(0, -1).forEach((key) => {
      at[key] = at[key] || {};
      at = at[key];
    });
    at[path[path.length - 1]] = value;
  }

  function formBody(form) {
    const body = {};
    form.querySelectorAll("input[name], select[name], textarea[name]").forEach((el) => {
      if (el.dataset.skip === "yes" || el.disabled) return;
      const type = el.dataset.type;
      if (el.type === "checkbox") {
        put(body, el.name, el.checked);
        return;
      }
      const value = el.value.trim();
      if (value === "") return; // unset: the API's default
      if (type === "int") put(body, el.name, parseInt(value, 10));
      else if (type === "float") put(body, el.name, parseFloat(value));
      else if (type === "bool") put(body, el.name, value === "true");
      else if (type === "list") put(body, el.name, value.split(",").map((v) => v.trim()).filter((v) => v));
      else put(body, el.name, value);
    });
    return body;
  }

  function showError(form, message) {
    const box = form.querySelector(".error");
    if (box) {
      box.textContent = message;
      box.hidden = false;
    } else {
      window.alert(message);
    }
  }

  function showResult(form, data) {
    const box = form.querySelector(".result");
    if (!box) return;
    box.replaceChildren();
    const list = document.createElement("dl");
    const add = (label, value) => {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      const code = document.createElement("code");
      code.textContent = value;
      code.tabIndex = 0;
      dd.append(code);
      const copy = document.createElement("button");
      copy.type = "button";
      copy.textContent = "Copy";
      copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(value));
      dd.append(" ", copy);
      list.append(dt, dd);
    };
    if (data.enroll_command) add("Run on the node", data.enroll_command);
    if (data.code) add("Pairing code", data.code);
    if (data.expires_at) add("Expires", new Date(data.expires_at).toLocaleString());
    if (data.psk) add("TLS key (shown once)", data.psk);
    if (data.psk_identity) add("Key identity", data.psk_identity);
    (data.disks || []).forEach((d) => {
      add("Disk " + d.disk_key + " URI", d.uri);
      if (d.image_opts) add("Disk " + d.disk_key + " qemu --image-opts", d.image_opts);
    });
    if (data.token) add("Token (shown once)", data.token);
    if (data.secret) add("Webhook signing key (shown once)", data.secret);
    if (data.target && data.target.name) add("Target", data.target.name + " (" + data.target.kind + ")");
    if (data.totp_uri) add("Authenticator URI (shown once)", data.totp_uri);
    box.append(list);
    box.hidden = false;
  }

  async function submitApi(form) {
    const error = form.querySelector(".error");
    if (error) error.hidden = true;
    const body = formBody(form);
    const confirmIf = form.dataset.confirmIf;
    if (form.dataset.confirm && (!confirmIf || body[confirmIf])) {
      if (!window.confirm(form.dataset.confirm)) return;
    }
    const method = form.dataset.method || "POST";
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const answer = await fetch(form.dataset.api, {
        method: method,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: method === "DELETE" ? undefined : JSON.stringify(body),
      });
      let data = {};
      try {
        data = await answer.json();
      } catch (e) {
        data = {};
      }
      if (!answer.ok) {
        showError(form, (data && data.message) || answer.status + " " + answer.statusText);
        return;
      }
      const then = form.dataset.then;
      if (then === "task" && data.job_id) window.location.assign("/tasks/" + data.job_id);
      else if (then === "reload") window.location.reload();
      else if (then === "show") showResult(form, data);
    } catch (e) {
      showError(form, "The hub did not answer: " + e);
    } finally {
      if (button) button.disabled = false;
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    submitApi(form);
  });

  // --- live tasks ----------------------------------------------------------------
  function totals(progress) {
    if (Array.isArray(progress.disks) && progress.disks.length) {
      let done = 0, total = 0, rate = 0;
      progress.disks.forEach((d) => {
        done += d.bytes_done || 0;
        total += d.bytes_total || 0;
        rate += d.rate_bytes_per_s || 0;
      });
      return { done, total, rate };
    }
    return { done: progress.bytes_done || 0, total: progress.bytes_total || 0, rate: progress.rate_bytes_per_s || 0 };
  }

  function setBar(taskId, percent) {
    document.querySelectorAll('progress[data-task="' + taskId + '"]').forEach((bar) => {
      bar.value = percent;
    });
    document.querySelectorAll('[data-task-pct="' + taskId + '"]').forEach((el) => {
      el.textContent = Math.floor(percent) + " %";
    });
  }

  function diskBars(progress) {
    const box = document.getElementById("disk-bars");
    if (!box || !Array.isArray(progress.disks)) return;
    progress.disks.forEach((d) => {
      const id = "disk-bar-" + d.disk_key;
      let bar = document.getElementById(id);
      if (!bar) {
        const row = document.createElement("p");
        const label = document.createElement("label");
        label.htmlFor = id;
        label.textContent = "Disk " + d.disk_key + " ";
        bar = document.createElement("progress");
        bar.id = id;
        bar.max = 100;
        const note = document.createElement("span");
        note.id = id + "-note";
        row.append(label, bar, " ", note);
        box.append(row);
      }
      const pct = d.bytes_total ? (100 * d.bytes_done) / d.bytes_total : 0;
      bar.value = pct;
      const phase = d.phase ? d.phase + ", " : "";
      document.getElementById(id + "-note").textContent =
        phase + Math.floor(pct) + " %, " + ((d.rate_bytes_per_s || 0) / 1e6).toFixed(1) + " MB/s";
    });
  }

  function appendLog(line) {
    const log = document.getElementById("task-log");
    if (!log) return;
    const item = document.createElement("li");
    item.className = "lvl-" + String(line.level).toLowerCase();
    const at = document.createElement("time");
    at.dateTime = line.at;
    at.textContent = new Date(line.at).toLocaleTimeString();
    item.append(at, " " + line.level + " " + line.source + ": " + line.message);
    log.append(item);
  }

  function chart(el, labels, series) {
    if (!window.uPlot || !el) return null;
    const width = Math.max(240, Math.min(el.clientWidth || 600, 900));
    const opts = {
      width: width,
      height: 180,
      series: [{}].concat(labels.map((l, i) => ({ label: l, stroke: ["#1f6feb", "#8250df"][i % 2], width: 2 }))),
      axes: [{}, {}],
    };
    return new window.uPlot(opts, series, el);
  }

  function follow(taskId, after, onTaskPage) {
    const source = new EventSource("/api/v1/tasks/" + taskId + "/events?after=" + after);
    const times = [], rates = [];
    let plot = null;
    source.addEventListener("progress", (event) => {
      const progress = JSON.parse(event.data);
      const t = totals(progress);
      if (t.total > 0) setBar(taskId, (100 * t.done) / t.total);
      if (onTaskPage) {
        diskBars(progress);
        times.push(Date.now() / 1000);
        rates.push(t.rate / 1e6);
        const el = document.getElementById("throughput");
        if (plot) plot.setData([times, rates]);
        else if (times.length > 1) plot = chart(el, ["MB/s"], [times, rates]);
      }
    });
    source.addEventListener("log", (event) => {
      if (onTaskPage) appendLog(JSON.parse(event.data));
    });
    source.addEventListener("state", (event) => {
      const task = JSON.parse(event.data);
      if (task.state === "complete") setBar(taskId, 100);
      if (!onTaskPage) return;
      const state = document.getElementById("task-state");
      if (state) state.textContent = task.state;
      if (task.error) {
        const box = document.getElementById("task-error");
        box.textContent = task.error;
        box.hidden = false;
      }
      if (["complete", "failed", "cancelled"].includes(task.state)) {
        const cancel = document.getElementById("cancel-form");
        if (cancel) cancel.hidden = true;
        if (task.time_split) {
          const split = document.getElementById("time-split");
          split.textContent =
            "Waiting on the source " + task.time_split.source_s.toFixed(1) + " s, on the target " +
            task.time_split.target_s.toFixed(1) + " s: the bottleneck was the " + task.time_split.bottleneck + ".";
        }
        source.close();
      }
    });
    source.onerror = () => {
      // The stream ends after the final state; the browser would reconnect to a
      // finished task again and again: stop once the page knows the end.
      const state = document.getElementById("task-state");
      if (!onTaskPage || (state && ["complete", "failed", "cancelled"].includes(state.textContent))) source.close();
    };
  }

  function liveTasks() {
    const page = document.getElementById("task");
    if (page) {
      if (page.dataset.ended !== "yes") follow(page.dataset.taskId, page.dataset.after || 0, true);
      return;
    }
    const seen = new Set();
    document.querySelectorAll("progress.task-bar[data-task]").forEach((bar) => {
      const id = bar.dataset.task;
      if (seen.has(id)) return;
      seen.add(id);
      follow(id, NO_LOG, false);
    });
  }

  async function usageCharts() {
    for (const el of document.querySelectorAll("[data-usage]")) {
      try {
        const answer = await fetch(el.dataset.usage, { credentials: "same-origin" });
        if (!answer.ok) continue;
        const points = await answer.json();
        if (!Array.isArray(points) || points.length === 0) {
          el.textContent = "No daily sample yet.";
          continue;
        }
        const xs = points.map((p) => new Date(p.day + "T00:00:00Z").getTime() / 1000);
        const used = points.map((p) => p.used / 2 ** 30);
        chart(el, ["used GiB"], [xs, used]);
      } catch (e) {
        el.textContent = "Usage history unavailable.";
      }
    }
  }

  // --- file-level restore: a restore point's filesystems and folders ------------
  // Names and link targets are the guest's data: set as text only, never as HTML.
  const OPENING =
    "Opening the restore point: its filesystems are read in an isolated appliance, this takes up to a minute.";
  const PAGE = 200; // entries per request; "Load more" asks for the next ones

  function size(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }

  async function callApi(url, method) {
    const answer = await fetch(url, {
      method: method || "GET",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf() },
    });
    const data = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      const error = new Error(data.message || answer.status + " " + answer.statusText);
      error.status = answer.status;
      throw error;
    }
    return data;
  }

  function make(tag, text, onClick) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (onClick) {
      el.type = "button";
      el.addEventListener("click", onClick);
    }
    return el;
  }

  function addRow(tbody, cells) {
    const tr = document.createElement("tr");
    cells.forEach((content) => {
      const td = document.createElement("td");
      td.append(...[].concat(content));
      tr.append(td);
    });
    tbody.append(tr);
  }

  function fileUrl(panel, fs, path, format) {
    return panel.dataset.browse + "/download?" + new URLSearchParams(format ? { fs, path, format } : { fs, path });
  }

  function fileLink(href, text, label) {
    const link = make("a", text);
    link.href = href;
    link.setAttribute("download", "");
    link.setAttribute("aria-label", label);
    return link;
  }

  function say(panel, text, failed) {
    const status = panel.querySelector(".status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(failed));
  }

  function crumbs(panel, fs, path) {
    const parts = path.split("/").filter((p) => p);
    const items = [fs].concat(parts).map((name, i) => {
      const item = document.createElement("li");
      const up = "/" + parts.slice(0, i).join("/");
      const last = i === parts.length;
      item.append(last ? make("span", name) : make("button", name, () => listFolder(panel, fs, up, false)));
      if (last) item.firstChild.setAttribute("aria-current", "location");
      return item;
    });
    panel.querySelector(".crumbs").replaceChildren(...items);
  }

  function entryRow(panel, fs, body, e) {
    let name = e.name;
    let get = "";
    if (e.type === "directory") {
      name = make("button", e.name, () => listFolder(panel, fs, e.path, false));
      const as = (f) => fileLink(fileUrl(panel, fs, e.path, f), f, "Download " + e.name + " as " + f);
      get = [as("tar"), " ", as("zip")];
    } else if (e.type === "symlink") {
      name = [e.name, " → ", make("code", e.target || "")];
    } else if (e.type === "file") {
      get = fileLink(fileUrl(panel, fs, e.path), "Download", "Download " + e.name);
    }
    const when = make("time", new Date(e.mtime).toLocaleString());
    when.dateTime = e.mtime;
    addRow(body, [name, e.type, e.type === "directory" ? "-" : size(e.size), when, get]);
  }

  async function listFolder(panel, fs, path, more) {
    const body = panel.querySelector(".entries tbody");
    const seq = (panel.seq = (panel.seq || 0) + 1); // only the last folder asked for is shown
    say(panel, "Reading " + path + " …");
    try {
      const query = new URLSearchParams({ fs, path, offset: more ? body.rows.length : 0, limit: PAGE });
      const data = await callApi(panel.dataset.browse + "/ls?" + query);
      if (seq !== panel.seq) return;
      if (!more) body.replaceChildren();
      crumbs(panel, fs, data.path);
      panel.querySelector(".as-tar").href = fileUrl(panel, fs, data.path, "tar");
      panel.querySelector(".as-zip").href = fileUrl(panel, fs, data.path, "zip");
      data.entries.forEach((e) => entryRow(panel, fs, body, e));
      const pager = panel.querySelector(".more");
      pager.hidden = body.rows.length >= data.total;
      pager.onclick = () => listFolder(panel, fs, data.path, true);
      panel.querySelector(".folder").hidden = false;
      say(panel, fs + " " + data.path + ": " + body.rows.length + " of " + data.total + " entries shown.");
    } catch (e) {
      if (seq === panel.seq) say(panel, e.message, true);
    }
  }

  function showFilesystems(panel, data) {
    const table = panel.querySelector(".filesystems");
    table.tBodies[0].replaceChildren();
    data.filesystems.forEach((f) => {
      let name = f.id;
      let state = "readable";
      if (f.readable) {
        name = make("button", f.id, () => listFolder(panel, f.id, "/", false));
      } else {
        state = make("span", f.error || (f.encrypted ? "encrypted (" + f.encrypted + ")" : "unreadable"));
        state.className = "error";
      }
      addRow(table.tBodies[0], [name, f.type, f.label || "-", size(f.size), size(f.used), state]);
    });
    table.hidden = false;
    say(panel, data.filesystems.length + " filesystems: choose a readable one to browse.");
  }

  async function openFiles(button) {
    const panel = document.getElementById(button.getAttribute("aria-controls"));
    panel.hidden = false;
    panel.querySelector(".filesystems").hidden = panel.querySelector(".folder").hidden = true;
    button.setAttribute("aria-expanded", "true");
    button.disabled = true;
    say(panel, OPENING);
    try {
      showFilesystems(panel, await callApi(panel.dataset.browse, "POST"));
    } catch (e) {
      say(panel, e.message, true);
    } finally {
      button.disabled = false;
    }
  }

  async function closeFiles(panel) {
    try {
      await callApi(panel.dataset.browse, "DELETE");
    } catch (e) {
      // 404: nothing open any more (closed when idle): the panel closes all the same.
      if (e.status !== 404) {
        say(panel, e.message, true);
        return;
      }
    }
    panel.hidden = true;
    const button = document.querySelector('[aria-controls="' + panel.id + '"]');
    button.setAttribute("aria-expanded", "false");
    button.focus();
  }

  function fileBrowsers() {
    document.querySelectorAll("button[data-files]").forEach((b) => b.addEventListener("click", () => openFiles(b)));
    document.querySelectorAll("section.files .close-files").forEach((b) =>
      b.addEventListener("click", () => closeFiles(b.closest("section.files"))),
    );
  }

  function start() {
    localTimes(document);
    liveTasks();
    usageCharts();
    fileBrowsers();
    document.body.addEventListener("htmx:afterSwap", (event) => localTimes(event.target));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
