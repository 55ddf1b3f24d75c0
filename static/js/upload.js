// Upload files one request at a time with a real progress bar and a per-file result table.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const table = document.getElementById("upload-results");
  const body = table.querySelector("tbody");
  const token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const maxBytes = Number(form.dataset.maxBytes) || Infinity;
  const maxMb = Number(form.dataset.maxMb).toLocaleString("en-US");

  function addRow(result) {
    const row = document.createElement("tr");
    row.className = "outcome-" + result.outcome;
    for (const text of [result.name, result.outcome, result.message || ""]) {
      const cell = document.createElement("td");
      cell.textContent = text; // never innerHTML: names come from files
      row.appendChild(cell);
    }
    body.appendChild(row);
  }

  function send(file, done, total, onProgress) {
    return new Promise(function (resolve) {
      const data = new FormData();
      data.append("files", file, file.webkitRelativePath || file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.endpoint);
      xhr.setRequestHeader("X-CSRFToken", token);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (event) { onProgress(done + event.loaded, total); };
      xhr.onload = function () {
        let payload = null;
        try { payload = JSON.parse(xhr.responseText); } catch (e) { payload = null; }
        if (payload && payload.results) { payload.results.forEach(addRow); }
        else { addRow({ name: file.name, outcome: "rejected", message: (payload && payload.error) || "The server refused the upload (" + xhr.status + ")." }); }
        resolve();
      };
      xhr.onerror = function () { addRow({ name: file.name, outcome: "rejected", message: "Network error; try again." }); resolve(); };
      xhr.send(data);
    });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const files = [];
    form.querySelectorAll("input[type=file]").forEach(function (input) { files.push(...input.files); });
    if (!files.length) { status.textContent = "Choose at least one file or folder."; return; }
    const total = files.reduce(function (sum, f) { return sum + f.size; }, 0) || 1;
    let done = 0;
    table.hidden = false;
    progress.hidden = false;
    const setProgress = function (loaded) { progress.value = Math.min(100, Math.round(loaded * 100 / total)); };
    for (let i = 0; i < files.length; i++) {
      status.textContent = "Uploading " + (i + 1) + " of " + files.length + "…";
      if (files[i].size > maxBytes) {
        // The server would stop reading it, and a browser cut off mid-upload sees a
        // reset connection rather than the answer that says why.
        addRow({ name: files[i].webkitRelativePath || files[i].name, outcome: "rejected", message: "Larger than one file of an upload may be (" + maxMb + " MB), so it was not sent. Upload it in smaller zips, or its files themselves." });
      } else {
        await send(files[i], done, total, setProgress);
      }
      done += files[i].size;
      setProgress(done);
    }
    const counts = { stored: 0, duplicate: 0, rejected: 0 };
    body.querySelectorAll("tr").forEach(function (row) { const k = row.children[1].textContent; if (k in counts) counts[k]++; });
    status.textContent = "Done: stored " + counts.stored + ", duplicate " + counts.duplicate + ", rejected " + counts.rejected + ".";
  });
})();
