// A family member calls a senior: POST /api/calls with the invite, join the call room with
// the token it returns (callcore.js), and say in plain words what the call is doing.
import { createCall, format, readStrings, standardUi } from "./callcore.js";

const section = document.getElementById("in-call");
const before = document.getElementById("before-call");
const callButton = document.getElementById("call-button");
const invite = section.dataset.invite;
const name = section.dataset.seniorName;

// Every string may name the senior: fill the name in once.
const text = readStrings();
for (const key of Object.keys(text)) text[key] = format(text[key], { name });

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
    showEnded(response?.status === 403 ? "link_invalid" : "call_failed");
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

window.verzilvering = {
  call,
  get state() {
    return call.state;
  },
  get callState() {
    return callState;
  },
  get callId() {
    return callId;
  },
};
