// Shared helpers of the demo pages: demo tokens, products, chat, media stats.
// The pages use only the public SDK (../sdk/sfu-client.js), the way a shop's own page would.

export const params = new URLSearchParams(location.search);

/** State the pages expose for people poking at them in the console (and for the tests). */
export const demo = { room: null, errors: [] };
window.demo = demo;

window.addEventListener("unhandledrejection", (event) => {
  demo.errors.push(String(event.reason));
});

/**
 * Ask this server's demo-only endpoint for a token.
 * @param {string} role host | viewer | buyer | assistant
 * @param {string} room
 * @param {string} [name]
 * @returns {Promise<{token: string, url: string, identity: string}>}
 */
export async function getToken(role, room, name) {
  const body = { role, room };
  if (name) body.name = name;
  const response = await fetch("token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`demo token: HTTP ${response.status}`);
  return response.json();
}

/** @returns {Promise<Array<Object>>} the demo shop's products */
export async function loadProducts() {
  const response = await fetch("products.json");
  return (await response.json()).products;
}

export function $(selector) {
  return document.querySelector(selector);
}

/** Build an element: el("div", {class: "x"}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatPrice(amount) {
  return new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" }).format(amount);
}

export function roomName(fallback) {
  const value = (params.get("room") || fallback).replace(/[^A-Za-z0-9_.:-]/g, "").slice(0, 64);
  return value || fallback;
}

export function guestName() {
  const saved = localStorage.getItem("demo-name");
  if (saved) return saved;
  return `Guest ${Math.floor(1000 + Math.random() * 9000)}`;
}

export function setStatus(node, text, tone = "") {
  node.textContent = text;
  node.className = `status ${tone}`;
}

let toastTimer = null;
export function toast(text) {
  let node = $(".toast");
  if (!node) {
    node = el("div", { class: "toast", role: "status" });
    document.body.append(node);
  }
  node.textContent = text;
  node.classList.remove("hidden");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => node.classList.add("hidden"), 2200);
}

/** Colour swatches for a product's variants. */
function swatches(product) {
  if (!product.variants || !product.variants.length) return null;
  return el(
    "div",
    { class: "swatches" },
    product.variants.map((v) =>
      el("span", { class: "swatch", title: v.name, style: `background:${v.hex}` }),
    ),
    el("span", { class: "swatch-label" }, product.variants.map((v) => v.name).join(" · ")),
  );
}

/** A product row for the host's list, with a pin button. */
export function productRow(product, onPin) {
  return el(
    "div",
    { class: "product", "data-sku": product.sku },
    el("img", { src: product.image, alt: "" }),
    el(
      "div",
      {},
      el("div", { class: "name" }, product.name),
      el("div", { class: "small muted" }, `${product.sku} · `, el("span", { class: "price" }, formatPrice(product.price))),
      swatches(product),
    ),
    el("button", { class: "secondary small pin", onclick: () => onPin(product) }, "Pin"),
  );
}

/** The card viewers see when the host pins a product. */
export function productCard(product, onBuy) {
  return el(
    "div",
    { class: "product-card", "data-sku": product.sku },
    el("img", { src: product.image, alt: product.name }),
    el(
      "div",
      {},
      el("div", { class: "kicker" }, "FEATURED NOW"),
      el("div", { class: "name" }, product.name),
      el("div", { class: "small muted" }, product.description || product.sku),
      swatches(product),
      el(
        "div",
        { class: "row" },
        el("span", { class: "price" }, formatPrice(product.price)),
        onBuy ? el("button", { class: "accent small", onclick: () => onBuy(product) }, "Add to bag") : null,
      ),
    ),
  );
}

/**
 * A chat box bound to a room's data messages with topic "chat".
 * Messages carry {text, name}; ours are shown at once (the SFU does not echo them).
 */
export class Chat {
  constructor(root, getName) {
    this.root = root;
    this.getName = getName;
    this.log = root.querySelector(".chat-log");
    this.form = root.querySelector(".chat-form");
    this.input = this.form.querySelector("input");
    this.button = this.form.querySelector("button");
    this.room = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.enable(false);
  }

  attach(room) {
    this.room = room;
    room.on("data", (msg) => {
      if (msg.topic !== "chat" || !msg.payload || typeof msg.payload.text !== "string") return;
      this.add(msg.payload.name || msg.from, msg.payload.text, false);
    });
    this.enable(true);
  }

  enable(on) {
    this.input.disabled = !on;
    this.button.disabled = !on;
    this.input.placeholder = on ? "Say something…" : "Chat opens when you join";
  }

  send() {
    const text = this.input.value.trim();
    if (!text || !this.room) return;
    this.room.sendData({ text: text.slice(0, 500), name: this.getName() }, { topic: "chat" });
    this.add("You", text, true);
    this.input.value = "";
  }

  add(who, text, mine) {
    const item = el("li", { class: mine ? "mine" : "" }, el("span", { class: "who" }, who), text);
    this.log.append(item);
    this.log.scrollTop = this.log.scrollHeight;
  }

  system(text) {
    this.log.append(el("li", { class: "system" }, text));
    this.log.scrollTop = this.log.scrollHeight;
  }
}

/** Play a remote track in an element, keeping one MediaStream per element (audio + video). */
export function attachTrack(element, remote) {
  let stream = element.srcObject;
  if (!(stream instanceof MediaStream)) {
    stream = new MediaStream();
    element.srcObject = stream;
  }
  for (const old of stream.getTracks()) {
    if (old.kind === remote.kind) stream.removeTrack(old);
  }
  stream.addTrack(remote.track);
  element.play().catch(() => {});
}

export function detachTrack(element, remote) {
  const stream = element.srcObject;
  if (stream instanceof MediaStream) stream.removeTrack(remote.track);
}

/** Receive-side numbers for the UI and for tests: decoded frames, audio packets, size. */
export async function receiveStats(room, video) {
  const result = { framesDecoded: 0, audioPackets: 0, videoPackets: 0, frameWidth: 0, frameHeight: 0 };
  if (room && room.subscriberPc) {
    const report = await room.subscriberPc.getStats();
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video") {
        result.framesDecoded += s.framesDecoded || 0;
        result.videoPackets += s.packetsReceived || 0;
        result.frameWidth = Math.max(result.frameWidth, s.frameWidth || 0);
        result.frameHeight = Math.max(result.frameHeight, s.frameHeight || 0);
      } else if (s.kind === "audio") {
        result.audioPackets += s.packetsReceived || 0;
      }
    });
  }
  result.videoWidth = video ? video.videoWidth : 0;
  result.videoHeight = video ? video.videoHeight : 0;
  result.state = room ? room.state : "none";
  return result;
}

/** Receive stats of the current room for the <video> matching `selector` (console, tests). */
demo.stats = (selector) => receiveStats(demo.room, document.querySelector(selector));

/** Resolve with performance.now() when `video` shows its first frame. */
export function firstFrame(video) {
  return new Promise((resolve) => {
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
      video.requestVideoFrameCallback(() => resolve(performance.now()));
    } else {
      const check = () => (video.videoWidth > 0 ? resolve(performance.now()) : setTimeout(check, 10));
      check();
    }
  });
}

/** The demo shows an error inline instead of failing silently. */
export function reportError(where, err, statusNode) {
  const text = `${where}: ${err && err.message ? err.message : err}`;
  demo.errors.push(text);
  console.warn(text);
  if (statusNode) setStatus(statusNode, text, "bad");
}
