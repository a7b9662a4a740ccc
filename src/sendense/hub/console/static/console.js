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

  function start() {
    localTimes(document);
    liveTasks();
    usageCharts();
    document.body.addEventListener("htmx:afterSwap", (event) => localTimes(event.target));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
