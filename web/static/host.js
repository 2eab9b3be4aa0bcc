// The host console: the shared call (callcore.js) plus moderation — the waiting room with
// a knock sound, per-person controls, room controls and a connection-quality indicator.
import { createCall, exposeHooks, format, readStrings, standardUi } from "./callcore.js";

const QUALITY_INTERVAL_MS = 2000;
const QUALITY_ICONS = { good: "●", fair: "▲", poor: "✖", unknown: "…" };

const text = readStrings();
const root = document.getElementById("call");
const el = (id) => document.getElementById(id);
const ui = {
  muteAll: el("mute-all"),
  lock: el("lock"),
  music: el("music"),
  end: el("end"),
  roomState: el("room-state"),
  lobbyList: el("lobby-list"),
  lobbyEmpty: el("lobby-empty"),
  lobbyCount: el("lobby-count"),
  banned: el("banned"),
  bannedList: el("banned-list"),
  participantCount: el("participant-count"),
  announcer: el("knock-announcer"),
  afterEnd: el("after-end"),
  dialog: el("confirm"),
  missing: el("missing"),
  missingList: el("missing-list"),
  missingEmpty: el("missing-empty"),
  missingCount: el("missing-count"),
  dialogText: el("confirm-text"),
};
const quality = {};
let knockSounds = 0;
// Removed participants kept out of the room until the host lets them back.
let banned = [];
// The activity's enrolled seniors (from `joined`, hosts only): who is not here yet.
let enrolled = [];

const call = createCall({
  token: root.dataset.token,
  tokenUrl: `/host/activities/${encodeURIComponent(root.dataset.activity)}/token`,
  tokenRefreshMs: Number(root.dataset.tokenRefreshMs),
  text,
  ui: standardUi(),
  tilesForAll: true,
  decorateTile,
  onMessage,
  onEnd,
});

// ---- The waiting room and its knock ----

let audioContext = null;

function ensureAudio() {
  audioContext ??= new AudioContext();
  if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
  return audioContext;
}

// Browsers only let a page make sound after a click; the host clicks "Start" and more.
document.addEventListener("pointerdown", ensureAudio, { once: true });
document.addEventListener("keydown", ensureAudio, { once: true });

// Two short tones, like a doorbell; generated, so there is no sound file to load.
function knockSound() {
  try {
    const ctx = ensureAudio();
    const start = ctx.currentTime + 0.02;
    [880, 660].forEach((frequency, i) => {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = frequency;
      const t = start + i * 0.22;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.3, t + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.2);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t);
      osc.stop(t + 0.21);
    });
    knockSounds += 1;
  } catch (error) {
    console.warn("verzilvering: no knock sound", error);
  }
}

function renderLobby() {
  const waiting = Object.values(call.lobby);
  ui.lobbyEmpty.hidden = waiting.length > 0;
  ui.lobbyCount.textContent = waiting.length ? `(${waiting.length})` : "";
  const items = waiting.map(({ participant_id, name }) =>
    personRow("lobby-person", { participantId: participant_id }, name, [
      ["admit", "button", { type: "admit", participant_id }],
      ["deny", "button secondary", { type: "deny", participant_id }],
    ]),
  );
  ui.lobbyList.replaceChildren(...items);
}

function renderBanned() {
  ui.banned.hidden = banned.length === 0 || call.state === "ended";
  const items = banned.map(({ participant_id, name }) =>
    personRow("lobby-person", { participantId: participant_id }, name, [
      ["unban", "button secondary", { type: "unban", participant_id }],
    ]),
  );
  ui.bannedList.replaceChildren(...items);
}

// A person in one of the console's lists: their name, then a button per [action, class,
// message]; the action names the button (data-action) and its label's key ("Let %(name)s in").
function personRow(rowClass, data, name, actions) {
  const li = document.createElement("li");
  li.className = rowClass;
  Object.assign(li.dataset, data);
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  li.append(label);
  for (const [action, className, message] of actions) {
    const control = button(format(text[action], { name }), className, () => call.send(message));
    control.dataset.action = action;
    li.append(control);
  }
  return li;
}

// ---- Who is missing, and ringing their kiosk ----

function renderMissing() {
  const joined = call.state === "connected";
  ui.missing.hidden = !joined || enrolled.length === 0;
  const present = call.participants;
  const missing = enrolled.filter((senior) => !(senior.id in present));
  ui.missingEmpty.hidden = missing.length > 0;
  ui.missingCount.textContent = missing.length ? `(${missing.length})` : "";
  const signature = JSON.stringify(missing.map((s) => s.id));
  if (ui.missingList.dataset.signature === signature) return;
  ui.missingList.dataset.signature = signature;
  const items = missing.map(({ id, name }) =>
    personRow("missing-person", { seniorId: id }, name, [
      ["ring", "button", { type: "invite_senior", senior_id: id, id: `invite:${id}` }],
    ]),
  );
  ui.missingList.replaceChildren(...items);
}

function seniorName(id) {
  return enrolled.find((senior) => senior.id === id)?.name ?? "";
}

// ---- Room controls ----

function renderRoom() {
  const joined = call.state === "connected";
  const room = call.roomState;
  for (const b of [ui.muteAll, ui.lock, ui.music, ui.end]) b.disabled = !joined;
  ui.lock.setAttribute("aria-pressed", String(!!room.locked));
  ui.music.setAttribute("aria-pressed", String(!!room.music_mode));
  ui.lock.toggleAttribute("data-on", !!room.locked);
  ui.music.toggleAttribute("data-on", !!room.music_mode);
  const lines = [room.locked ? text.locked : text.unlocked, room.music_mode ? text.music_on : text.music_off];
  ui.roomState.textContent = joined ? lines.join(" · ") : "";
  const count = Object.keys(call.participants).length;
  ui.participantCount.textContent = joined ? `(${count})` : "";
}

ui.muteAll.addEventListener("click", () => {
  call.send({ type: "mute_all", kind: "audio" });
  call.showNotice(text.all_muted);
});
ui.lock.addEventListener("click", () => call.send({ type: "lock", locked: !call.roomState.locked }));
ui.music.addEventListener("click", () => call.send({ type: "music_mode", enabled: !call.roomState.music_mode }));
ui.end.addEventListener("click", async () => {
  if (await confirmDialog(text.end_confirm)) call.send({ type: "end" });
});

function confirmDialog(question) {
  return new Promise((resolve) => {
    ui.dialogText.textContent = question;
    ui.dialog.returnValue = "";
    ui.dialog.addEventListener("close", () => resolve(ui.dialog.returnValue === "yes"), { once: true });
    ui.dialog.showModal();
    document.getElementById("confirm-no").focus();
  });
}

// ---- One person's tile: controls and connection quality ----

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function decorateTile(tile, participant) {
  if (!participant) return;
  const id = participant.participant_id;
  let panel = tile.figure.querySelector(".tile-controls");
  if (!panel) {
    panel = document.createElement("div");
    panel.className = "tile-controls";
    const meter = document.createElement("p");
    meter.className = "quality";
    panel.append(meter);
    tile.figure.append(panel);
  }
  renderQuality(tile, id);
  const name = participant.name;
  const spotlit = call.roomState.spotlight === id;
  // Rebuild the buttons only when what they say changes, so keyboard focus stays put.
  const signature = JSON.stringify([name, !!participant.audio_muted, spotlit]);
  if (panel.dataset.signature === signature) return;
  panel.dataset.signature = signature;
  const focused = panel.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  const actions = [];
  if (!participant.audio_muted) {
    actions.push(
      withAction("mute", button(format(text.mute, { name }), "button small", () =>
        call.send({ type: "mute", kind: "audio", muted: true, participant_id: id }),
      )),
    );
  } else {
    actions.push(
      withAction("ask-unmute", button(format(text.ask_unmute, { name }), "button small", () => {
        call.send({ type: "ask_unmute", participant_id: id, kind: "audio" });
        call.showNotice(format(text.asked_unmute, { name }));
      })),
    );
  }
  actions.push(
    withAction("spotlight", button(format(spotlit ? text.unspotlight : text.spotlight, { name }), "button small secondary", () =>
      call.send({ type: "spotlight", participant_id: spotlit ? null : id }),
    )),
  );
  actions.push(
    withAction("remove", button(format(text.remove, { name }), "button small danger", async () => {
      if (await confirmDialog(format(text.remove_confirm, { name }))) {
        call.send({ type: "kick", participant_id: id });
      }
    })),
  );
  const row = document.createElement("div");
  row.className = "tile-actions";
  row.append(...actions);
  panel.querySelector(".tile-actions")?.remove();
  panel.append(row);
  if (focused) {
    // Mute turns into "ask to unmute" and back: focus the button in the same place.
    const same = row.querySelector(`[data-action="${focused}"]`) ?? row.querySelector("button");
    same?.focus();
  }
}

function withAction(action, element) {
  element.dataset.action = action;
  return element;
}

function renderQuality(tile, id) {
  const meter = tile.figure.querySelector(".quality");
  if (!meter) return;
  const level = quality[id]?.level ?? "unknown";
  const word = level === "unknown" ? text.quality_unknown : text[`quality_${level}`];
  meter.dataset.level = level;
  const icon = document.createElement("span");
  icon.className = "quality-icon";
  icon.setAttribute("aria-hidden", "true");
  icon.textContent = QUALITY_ICONS[level];
  const label = document.createElement("span");
  label.textContent = format(text.quality_label, { quality: word });
  meter.replaceChildren(icon, label);
  const q = quality[id];
  // The layer the server forwards to this console: picture height and frame rate.
  const layer = q?.videoHeight ? ` · ${q.videoHeight}p ${q.framesPerSecond ?? "?"} fps` : "";
  if (layer) {
    const detail = document.createElement("span");
    detail.className = "quality-layer";
    detail.textContent = layer;
    meter.append(detail);
  }
  meter.title = q ? format(text.quality_detail, { loss: q.lossPct, jitter: q.jitterMs, rtt: q.rttMs }) + layer : "";
}

async function measureQuality() {
  if (call.state !== "connected") return;
  const measured = await call.quality();
  for (const key of Object.keys(quality)) if (!(key in measured)) delete quality[key];
  Object.assign(quality, measured);
  for (const id of call.tiles) {
    const tile = call.tile(id);
    if (tile) renderQuality(tile, id);
  }
}
setInterval(() => measureQuality().catch((error) => console.warn("verzilvering: stats", error)), QUALITY_INTERVAL_MS);

// ---- Messages ----

function onMessage(message) {
  if (message.type === "joined" && Array.isArray(message.enrolled)) {
    enrolled = message.enrolled;
  } else if (message.type === "invite_sent") {
    call.showNotice(format(text.ringing, { name: seniorName(message.senior_id) }));
  } else if (message.type === "error" && message.code === "senior_offline" && message.ref?.startsWith("invite:")) {
    call.showNotice(format(text.ring_offline, { name: seniorName(message.ref.slice("invite:".length)) }));
  }
  if (message.type === "knock") {
    knockSound();
    ui.announcer.textContent = format(text.knock, { name: message.participant.name });
  } else if (message.type === "error" && message.code === "not_in_lobby") {
    call.showNotice(text.not_in_lobby);
  } else if (message.type === "joined" || message.type === "ban_list") {
    banned = message.banned ?? [];
    renderBanned();
  }
  renderLobby();
  renderRoom();
  renderMissing();
}

function onEnd(reason) {
  renderBanned();
  renderLobby();
  renderRoom();
  renderMissing();
  if (reason === "ended") el("status").textContent = text.host_ended;
  ui.afterEnd.hidden = false;
}

renderLobby();
renderRoom();
renderMissing();

exposeHooks(
  call,
  {
    knockSounds: () => knockSounds,
    banned: () => banned.map((person) => ({ ...person })),
    quality: () => ({ ...quality }),
  },
  { measureQuality },
);
