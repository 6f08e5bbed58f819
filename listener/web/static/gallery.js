// Live updates: the server sends hints over Server-Sent Events ("new rows", "these rows
// changed"); the page fetches only the cards it shows. No build step, no framework.
(function () {
  "use strict";
  const grid = document.getElementById("grid");
  const live = document.getElementById("live");
  const viewer = document.getElementById("viewer");
  const full = document.getElementById("full");
  const queueText = document.getElementById("queue");
  if (!grid) return;

  function filters() {
    const p = new URLSearchParams();
    if (grid.dataset.status) p.set("status", grid.dataset.status);
    if (grid.dataset.q) p.set("q", grid.dataset.q);
    return p;
  }

  function maxId() {
    let m = 0;
    for (const c of grid.querySelectorAll(".card")) m = Math.max(m, Number(c.dataset.id));
    return m;
  }

  async function cards(url) {
    const r = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (!r.ok) return [];
    const queueLine = r.headers.get("X-Queue");
    if (queueLine && queueText) {
      const [waiting, generating] = queueLine.split(" ");
      queueText.textContent = waiting + " waiting · " + generating + " generating";
    }
    const t = document.createElement("template");
    t.innerHTML = await r.text();
    return Array.from(t.content.querySelectorAll(".card"));
  }

  async function addNew() {
    if (grid.dataset.first !== "1") return;  // older pages stay as they are
    const p = filters();
    p.set("after", String(maxId()));
    const found = await cards("/fragment?" + p.toString());
    for (const card of found.reverse()) {
      if (document.getElementById(card.id)) continue;
      card.classList.add("fresh");
      grid.prepend(card);
    }
    const none = document.getElementById("none");
    if (found.length && none) none.remove();
  }

  async function refresh(ids) {
    const shown = ids.filter((id) => document.getElementById("row-" + id));
    for (let i = 0; i < shown.length; i += 48) {
      const found = await cards("/fragment?ids=" + shown.slice(i, i + 48).join(","));
      for (const card of found) {
        const old = document.getElementById(card.id);
        if (old && old.dataset.version !== card.dataset.version) {
          card.classList.add("fresh");
          old.replaceWith(card);
        }
      }
    }
  }

  function pending() {
    return Array.from(grid.querySelectorAll('.card[data-final="0"]')).map((c) => Number(c.dataset.id));
  }

  let busy = Promise.resolve();
  function queue(job) { busy = busy.then(job).catch(() => {}); }

  if (window.EventSource) {
    const source = new EventSource("/events");
    source.onopen = () => {
      live.classList.add("on");
      queue(addNew);  // whatever happened while the stream was not connected
      queue(() => refresh(pending()));
    };
    source.onerror = () => live.classList.remove("on");
    source.onmessage = (e) => {
      const hint = JSON.parse(e.data);
      if (hint.reload) { queue(addNew); queue(() => refresh(pending())); return; }
      if (hint.new) queue(addNew);
      if (hint.changed && hint.changed.length) queue(() => refresh(hint.changed));
    };
  }

  grid.addEventListener("click", (e) => {
    const a = e.target.closest("a.pic");
    if (!a || !viewer || !viewer.showModal) return;
    e.preventDefault();
    full.src = a.dataset.full;
    full.alt = a.querySelector("img") ? a.querySelector("img").alt : "";
    viewer.showModal();
  });
  if (viewer) viewer.addEventListener("click", (e) => { if (e.target === viewer) viewer.close(); });
})();
