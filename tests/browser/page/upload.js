"use strict";
// The engine admin portal's upload loop, as a test fixture: one PUT per
// chunk to the transfer URL (?flush=n, the last one ?close=y), with
// Content-Range naming the chunk and the image size and caching turned off;
// a failed chunk is sent again after a pause, a few times; cancel aborts the
// running request; progress comes from the request's upload events. The
// browser lane drives it through window.startUpload and reads window.upload.

const upload = {
  phase: "idle",    // idle, transferring, done, failed, canceled
  sent: 0,          // bytes the server has acknowledged
  total: 0,
  shown: 0,         // bytes the progress bar shows
  shownSteps: [],   // the values it showed, in order
  requests: [],     // {start, end, status} of every PUT that ended
  retries: 0,
  canceledAt: null,
  status: null,     // the HTTP status that failed the upload (0: no answer)
  reason: null,     // and the server's message, readable through CORS
};
window.upload = upload;

let xhr = null;

function show(bytes) {
  upload.shown = bytes;
  const bar = document.getElementById("progress");
  bar.max = upload.total;
  bar.value = bytes;
  const percent = upload.total ? Math.floor((100 * bytes) / upload.total) : 100;
  document.getElementById("percent").textContent = `${percent}%`;
  const steps = upload.shownSteps;
  if (steps.length === 0 || steps[steps.length - 1] !== bytes) steps.push(bytes);
}

function message(text) {
  document.getElementById("message").textContent = text;
}

function fail(status, reason) {
  upload.phase = "failed";
  upload.status = status;
  upload.reason = reason;
  message(`upload failed: ${status} ${reason}`);
}

function startUpload(url, options) {
  const opts = Object.assign(
    {start: 0, chunkSize: 8 * 1024 * 1024, maxRetries: 3, retryDelayMs: 200,
     timeoutMs: 120000, cancelAt: null},
    options);
  const file = document.getElementById("file").files[0];
  if (!file) {
    fail(null, "no file selected");
    return;
  }
  Object.assign(upload, {
    phase: "transferring", sent: opts.start, total: file.size, shownSteps: [],
    requests: [], retries: 0, canceledAt: null, status: null, reason: null,
  });
  show(opts.start);
  let chunkEnd = 0;
  let failures = 0;  // of the chunk being sent

  function sendChunk() {
    if (upload.phase !== "transferring") return;
    if (upload.sent === upload.total) {
      upload.phase = "done";
      message("done");
      return;
    }
    chunkEnd = Math.min(upload.sent + opts.chunkSize, upload.total);
    const last = chunkEnd === upload.total;
    // Flushing every chunk costs an fsync each; the last one flushes and
    // closes the connection, so the host can release the volume.
    xhr.open("PUT", url + (last ? "?close=y" : "?flush=n"));
    xhr.timeout = opts.timeoutMs;  // only after open()
    xhr.setRequestHeader("Cache-Control", "no-cache");
    xhr.setRequestHeader("Pragma", "no-cache");
    xhr.setRequestHeader("Content-Range",
                         `bytes ${upload.sent}-${chunkEnd - 1}/${upload.total}`);
    xhr.send(file.slice(upload.sent, chunkEnd));
  }

  xhr = new XMLHttpRequest();
  xhr.upload.addEventListener("progress", (e) => {
    if (upload.phase !== "transferring") return;
    show(upload.sent + e.loaded);
    if (opts.cancelAt !== null && upload.shown >= opts.cancelAt) cancelUpload();
  });
  xhr.addEventListener("loadend", () => {
    upload.requests.push({start: upload.sent, end: chunkEnd, status: xhr.status});
    if (upload.phase !== "transferring") return;
    if (xhr.status === 200 || xhr.status === 204) {
      failures = 0;
      upload.sent = chunkEnd;
      show(upload.sent);
      setTimeout(sendChunk, 0);
      return;
    }
    // Status 0 is a reset, a refused connection or a timeout.
    if (failures < opts.maxRetries) {
      failures++;
      upload.retries++;
      show(upload.sent);
      message(`retrying from byte ${upload.sent} (${failures} of ${opts.maxRetries})`);
      setTimeout(sendChunk, opts.retryDelayMs);
      return;
    }
    fail(xhr.status, xhr.responseText);
  });
  message(`uploading from byte ${upload.sent}`);
  sendChunk();
}

function cancelUpload() {
  if (upload.phase !== "transferring") return;
  upload.phase = "canceled";
  upload.canceledAt = upload.shown;
  message("canceled");
  xhr.abort();
}

document.getElementById("cancel").addEventListener("click", cancelUpload);
window.startUpload = startUpload;
window.cancelUpload = cancelUpload;
