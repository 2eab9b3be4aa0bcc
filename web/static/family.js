// A family member calls a senior: POST /api/calls with the invite, join the call room with
// the token it returns (callcore.js), and say in plain words what the call is doing.
import { createCall, exposeHooks, format, readStrings, standardUi } from "./callcore.js";

const section = document.getElementById("in-call");
const before = document.getElementById("before-call");
const callButton = document.getElementById("call-button");
const invite = section.dataset.invite;
const name = section.dataset.seniorName;

// Every string may name the senior: fill the name in once.
const text = readStrings();
// (Only the name: the missed-call lines fill in their time later.)
for (const key of Object.keys(text)) text[key] = text[key].replaceAll("%(name)s", name);

const ENDING_STATES = new Set(["declined", "busy", "missed", "unavailable"]);
const STATE_TEXT = { ringing: "calling", warning: "warning", accepted: "accepted" };
let callId = null;
let callState = null;
let everConnected = false;

const call = createCall({
  text,
  ui: standardUi(),
  statusText() {
    return callState ? text[STATE_TEXT[callState]] ?? null : null;
  },
  onMessage(message) {
    if (message.type === "joined") {
      const initial = message.room_state?.call;
      if (initial && initial.call_id === callId) setCallState(initial.state);
    } else if (message.type === "call_state" && (!message.call_id || message.call_id === callId)) {
      setCallState(message.state);
    } else if (message.type === "participant_joined") {
      everConnected = true;
      call.updateStatus();
    } else if (message.type === "participant_left" && message.participant_id !== call.selfId) {
      // The senior hung up: nobody left to talk to.
      if (everConnected && Object.keys(call.participants).length === 0) call.finish("hung_up");
    }
  },
});

function setCallState(state) {
  callState = state;
  if (ENDING_STATES.has(state)) call.finish(state);
  else call.updateStatus();
}

function showEnded(key) {
  const status = document.getElementById("status");
  status.textContent = text[key];
  document.getElementById("tiles").hidden = true;
  document.getElementById("controls").hidden = true;
  const again = document.getElementById("rejoin");
  again.href = location.pathname;
  again.hidden = key === "link_invalid";
}

callButton.addEventListener("click", async () => {
  callButton.disabled = true;
  before.hidden = true;
  section.hidden = false;
  callState = "ringing";
  call.updateStatus();
  let response;
  let body = {};
  try {
    response = await fetch("/api/calls", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ invite }),
      credentials: "omit",
    });
    body = await response.json().catch(() => ({}));
  } catch (error) {
    console.warn("verzilvering: could not start the call", error);
  }
  if (!response?.ok) {
    const reason = { 403: "link_invalid", 429: "too_many_calls" }[response?.status] || "call_failed";
    showEnded(reason);
    return;
  }
  callId = body.call_id;
  if (body.state === "unavailable") {
    callState = "unavailable";
    showEnded("unavailable");
    return;
  }
  if (body.state) callState = body.state;
  call.start(body.token);
});

// ---- The senior calls: this page listens while it is open ------------------------------
// One WebSocket as a "contact" (docs/protocol.md): the kiosk's call rings here, with a
// sound (Web Audio, once the browser allows it), and a notification when the tab is in
// the background and the family member allowed notifications. Calls missed earlier are
// listed until "Seen" is pressed.

const incomingBox = document.getElementById("incoming");
const acceptButton = document.getElementById("accept-button");
const declineButton = document.getElementById("decline-button");
const listenStatus = document.getElementById("listen-status");
const soundRow = document.getElementById("sound-row");
const notifyRow = document.getElementById("notify-row");
const missedBox = document.getElementById("missed");
const missedList = document.getElementById("missed-list");
const lang = document.documentElement.lang || "nl";

const listener = { ws: null, state: "connecting", attempts: 0, pinger: null };
let ringing = null; // {call_id, timer}
let ringsPlayed = 0;
let notification = null;
let missedCalls = [];
let audio = null;

function listenSend(message) {
  if (listener.ws?.readyState === WebSocket.OPEN) listener.ws.send(JSON.stringify(message));
}

function listen() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws`);
  listener.ws = ws;
  ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "hello", v: 1, contact: { invite } })));
  ws.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    onListenMessage(message);
  });
  ws.addEventListener("close", (event) => {
    clearInterval(listener.pinger);
    if (listener.ws !== ws) return;
    if (event.code === 4001) {
      setListenState("invalid");
      return;
    }
    setListenState("offline");
    const delay = Math.min(30000, 1000 * 2 ** listener.attempts++) * (0.75 + Math.random() / 2);
    setTimeout(listen, delay);
  });
}

function setListenState(state) {
  listener.state = state;
  listenStatus.dataset.state = state;
  if (state === "listening") listenStatus.textContent = text.listening;
  else if (state === "offline") listenStatus.textContent = text.listen_offline;
  else if (state === "invalid") listenStatus.textContent = text.link_invalid;
}

function onListenMessage(message) {
  if (message.type === "contact_welcome") {
    listener.attempts = 0;
    setListenState("listening");
    clearInterval(listener.pinger);
    listener.pinger = setInterval(() => listenSend({ type: "ping", ts: Date.now() }), message.ping_interval_ms || 10000);
    showMissed(message.missed_calls || []);
  } else if (message.type === "keepalive") {
    // Answered from the message event: a background tab's timers may be throttled.
    listenSend({ type: "ping", ts: Date.now() });
  } else if (message.type === "incoming_call") {
    ring(message);
  } else if (message.type === "call_cancelled") {
    if (!ringing || ringing.call_id !== message.call_id) return;
    stopRinging();
    if (message.reason === "hung_up" || message.reason === "missed") {
      showMissed([...missedCalls, { at: Math.floor(Date.now() / 1000) }]);
    }
    if (message.reason === "hung_up") showNoticeOnPage(text.senior_hung_up);
    else if (message.reason === "answered_elsewhere") showNoticeOnPage(text.answered_elsewhere);
  } else if (message.type === "call_join") {
    stopRinging();
    answered(message);
  } else if (message.type === "missed_cleared") {
    showMissed([]);
  } else if (message.type === "error") {
    console.warn("verzilvering: listening", message.code, message.message);
    if (message.code === "unknown_call") stopRinging();
  }
}

function showNoticeOnPage(words) {
  listenStatus.textContent = words;
}

function clock(date) {
  return date.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
}

function showMissed(calls) {
  missedCalls = calls;
  missedList.replaceChildren();
  const today = new Date().toDateString();
  for (const entry of calls) {
    const when = new Date(entry.at * 1000);
    const li = document.createElement("li");
    li.textContent = when.toDateString() === today
      ? format(text.missed_at, { name, time: clock(when) })
      : format(text.missed_on, {
          name,
          day: when.toLocaleDateString(lang, { weekday: "long", day: "numeric", month: "long" }),
          time: clock(when),
        });
    missedList.append(li);
  }
  missedBox.hidden = calls.length === 0;
}

document.getElementById("missed-seen").addEventListener("click", () => {
  listenSend({ type: "missed_seen" });
  showMissed([]);
});

// --- sound: browsers only play after the page was touched once (autoplay rules) --------

function audioContext() {
  if (!audio) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    audio = new Context();
    audio.addEventListener("statechange", updateSoundRow);
  }
  return audio;
}

function unlockSound() {
  const ctx = audioContext();
  if (ctx && ctx.state !== "running") ctx.resume().catch(() => {}).finally(updateSoundRow);
  updateSoundRow();
}

function updateSoundRow() {
  soundRow.hidden = !audio || audio.state === "running";
}

function ringOnce() {
  const ctx = audio;
  if (!ctx || ctx.state !== "running") return;
  const start = ctx.currentTime + 0.02;
  [[0, 880], [0.3, 660], [0.6, 880], [0.9, 660]].forEach(([offset, frequency]) => {
    const oscillator = ctx.createOscillator();
    const gain = ctx.createGain();
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, start + offset);
    gain.gain.exponentialRampToValueAtTime(0.4, start + offset + 0.03);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.25);
    oscillator.connect(gain).connect(ctx.destination);
    oscillator.start(start + offset);
    oscillator.stop(start + offset + 0.27);
  });
  ringsPlayed += 1;
}

// --- notifications: only with permission, only when the tab is not in view ------------------

function updateNotifyRow() {
  notifyRow.hidden = !("Notification" in window) || Notification.permission !== "default";
}

document.getElementById("notify-button").addEventListener("click", async () => {
  try {
    await Notification.requestPermission();
  } catch (error) {
    console.warn("verzilvering: notifications", error);
  }
  updateNotifyRow();
});

function notify(message) {
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  try {
    notification = new Notification(text.incoming_title, {
      body: text.notification_body,
      tag: `verzilvering-${message.call_id}`,
      requireInteraction: true,
    });
    notification.addEventListener("click", () => window.focus());
  } catch (error) {
    // Phones need a service worker for notifications; the page still rings.
    console.warn("verzilvering: no notification", error);
  }
}

// --- ringing ---------------------------------------------------------------------------------

function ring(message) {
  if (call.state !== "idle" || ringing) return;
  const timeout = (message.ring_timeout_ms || 45000) + 5000;
  ringing = { call_id: message.call_id, timer: setTimeout(stopRinging, timeout) };
  ringing.sound = setInterval(ringOnce, 2500);
  ringOnce();
  incomingBox.hidden = false;
  acceptButton.disabled = declineButton.disabled = false;
  acceptButton.focus();
  notify(message);
}

function stopRinging() {
  if (ringing) {
    clearTimeout(ringing.timer);
    clearInterval(ringing.sound);
  }
  ringing = null;
  incomingBox.hidden = true;
  notification?.close();
  notification = null;
}

acceptButton.addEventListener("click", () => {
  if (!ringing) return;
  acceptButton.disabled = declineButton.disabled = true;
  listenSend({ type: "call_answer", call_id: ringing.call_id, accept: true });
});

declineButton.addEventListener("click", () => {
  if (!ringing) return;
  listenSend({ type: "call_answer", call_id: ringing.call_id, accept: false });
  stopRinging();
});

function answered(message) {
  before.hidden = true;
  section.hidden = false;
  callId = message.call_id;
  callState = "accepted";
  call.start(message.token);
}

for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, unlockSound, { capture: true });
document.getElementById("sound-button").addEventListener("click", unlockSound);
audioContext();
updateSoundRow();
updateNotifyRow();
listen();

exposeHooks(call, {
  listening: () => listener.state,
  ringing: () => ringing?.call_id ?? null,
  ringsPlayed: () => ringsPlayed,
  sound: () => audio?.state ?? "none",
  missedCalls: () => missedCalls.map((entry) => ({ ...entry })),
  callState: () => callState,
  callId: () => callId,
});
