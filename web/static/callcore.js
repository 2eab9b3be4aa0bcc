// Verzilvering call core: speaks the signalling protocol of docs/protocol.md over /ws and
// keeps one RTCPeerConnection for the whole session; the server is always the offerer.
// Shared by every page with a call in it (call.js, host.js, family.js): each page creates
// one call with createCall() and adds its own controls through the hooks.
// No framework and no build step, so the file served is the file in the repository.
"use strict";

const PROTOCOL_VERSION = 1;
// The server does no trickle ICE, so answers wait for gathering; on a machine with an
// unreachable STUN server this bounds the wait and sends the candidates found so far.
const ICE_GATHERING_TIMEOUT_MS = 5000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
// Media that fails at once (ICE finds no path through a firewall) would otherwise start the
// session over every half second, forever. Each start-over waits longer (these delays, the
// last one repeating); the count clears only after media kept flowing for
// MEDIA_HEALTHY_MS, and after MEDIA_FAILURES_BEFORE_NOTICE failures the page says why.
const MEDIA_RESTART_DELAYS_MS = [500, 2000, 4000, 8000, 16000, 30000];
const MEDIA_HEALTHY_MS = 20000;
const MEDIA_FAILURES_BEFORE_NOTICE = 3;
// Media that has not connected this long after an answer has failed, even when the browser
// keeps waiting (with no candidate pair at all it stays "new" for ever).
const MEDIA_CONNECT_TIMEOUT_MS = 12000;

// How long to wait before the next connection: the socket's own backoff, or the media's
// when sessions keep failing, whichever is longer (before jitter).
export function reconnectDelay(socketAttempt, mediaFailures) {
  const socketDelay = RECONNECT_DELAYS_MS[Math.min(socketAttempt, RECONNECT_DELAYS_MS.length - 1)];
  const mediaDelay = mediaFailures
    ? MEDIA_RESTART_DELAYS_MS[Math.min(mediaFailures - 1, MEDIA_RESTART_DELAYS_MS.length - 1)]
    : 0;
  return Math.max(socketDelay, mediaDelay);
}
// After these close codes reconnecting cannot help (see "Close codes" in the protocol).
const CLOSE_ENDS_CALL = {
  1000: "left",
  4001: "link_invalid",
  4003: "removed",
  4004: "replaced",
  4006: "denied",
  4007: "link_invalid",
};
const LINK_ERRORS = new Set(["token_invalid", "token_expired", "token_wrong_room", "token_revoked", "unsupported_version"]);
// Access taken back (docs/protocol.md, "Revocation"): the call ends; retrying cannot help.
const ACCESS_ERRORS = { banned: "removed", activity_ended: "ended" };
const JOIN_REF = "join";
// Opus settings for music (docs/protocol.md, music_mode).
const MUSIC_BITRATE = 128000;
// Simulcast: the server offers rids h, m and l (full, half and quarter size); the browser
// answers with the encodings it sends. VP8 temporal layers where the browser takes them.
export const SIMULCAST_SCALE = { h: 1, m: 2, l: 4 };
const TEMPORAL_MODES = ["L1T3", "L1T2"];
// The tile sizes sent to the server (`layout`) settle for this long before going out.
const LAYOUT_DELAY_MS = 400;

// Connection quality from the receiving side of one participant's media.
export const QUALITY_LIMITS = {
  good: { lossPct: 2, jitterMs: 30, rttMs: 250 },
  fair: { lossPct: 8, jitterMs: 75, rttMs: 500 },
};

export function qualityLevel({ lossPct, jitterMs, rttMs }) {
  const within = (limits) =>
    (lossPct ?? 0) < limits.lossPct && (jitterMs ?? 0) < limits.jitterMs && (rttMs ?? 0) < limits.rttMs;
  if (within(QUALITY_LIMITS.good)) return "good";
  if (within(QUALITY_LIMITS.fair)) return "fair";
  return "poor";
}

// "%(name)s" placeholders, as in the gettext catalogs the strings come from.
export function format(text, values = {}) {
  return String(text ?? "").replace(/%\((\w+)\)s/g, (_, key) => String(values[key] ?? ""));
}

export function readStrings(id = "strings") {
  return JSON.parse(document.getElementById(id).textContent);
}

// Hooks for tests and for curious support staff, as window.verzilvering: the call and its
// state, the page's own values (`readers`: name → function, read when asked) and `more` as is.
export function exposeHooks(call, readers, more = {}) {
  const hooks = { call, ...more };
  for (const [name, read] of Object.entries({ state: () => call.state, ...readers })) {
    Object.defineProperty(hooks, name, { get: read, enumerable: true, configurable: true });
  }
  window.verzilvering = hooks;
}

// The elements every call page has (templates/_call.html).
export function standardUi(doc = document) {
  const byId = (id) => doc.getElementById(id);
  return {
    status: byId("status"),
    notice: byId("notice"),
    tiles: byId("tiles"),
    controls: byId("controls"),
    selfVideo: byId("self-video"),
    mic: byId("mic"),
    camera: byId("camera"),
    leave: byId("leave"),
    playSound: byId("play-sound"),
    rejoin: byId("rejoin"),
  };
}

export function createCall(options) {
  const text = options.text;
  const ui = options.ui;
  const hooks = {
    // (message, call) after the core handled a server message.
    onMessage: options.onMessage ?? (() => {}),
    // (reason) once the call is over for good.
    onEnd: options.onEnd ?? (() => {}),
    // (tile, participant) after a tile's caption was drawn; pages add controls here.
    decorateTile: options.decorateTile ?? (() => {}),
    // () → a status line that replaces the standard one, or null.
    statusText: options.statusText ?? (() => null),
  };

  const call = {
    token: options.token ?? null,
    // "idle" before start(), "connecting" until joined, "lobby" while waiting to be
    // admitted, "connected", "reconnecting" while the socket is down, "ended" at the end.
    state: "idle",
    endReason: null,
    ws: null,
    welcome: null,
    permissions: new Set(),
    session: null,
    lastSeq: null,
    selfId: null,
    joined: false,
    participants: new Map(),
    lobby: new Map(),
    roomState: { locked: false, spotlight: null, music_mode: false },
    consumersByMid: new Map(),
    pc: null,
    // Bumped when the session starts over, so work queued for the old one is dropped.
    generation: 0,
    negotiations: Promise.resolve(),
    // An answer made while the socket was down; the offer is not replayed on resume.
    unsentAnswer: null,
    localMedia: null,
    micMuted: false,
    cameraMuted: false,
    tiles: new Map(),
    pingTimer: null,
    reconnectTimer: null,
    reconnectAttempt: 0,
    // Sessions started over because their media failed, since media last flowed a while.
    mediaFailures: 0,
    mediaHealthyTimer: null,
    mediaConnectTimer: null,
    lastMessageAt: 0,
    qualityPrevious: new Map(),
    publishQuality: null,
    // The temporal layer mode the camera's sender took, or null (docs/protocol.md, layout).
    temporalMode: null,
    layoutSent: "",
    layoutTimer: null,
    activeSpeaker: null,
  };

  // ---- Signalling socket ----

  function connect() {
    call.reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    call.ws = ws;
    ws.onopen = () => {
      call.lastMessageAt = Date.now();
      sendHello();
    };
    ws.onmessage = (event) => {
      if (ws !== call.ws) return;
      call.lastMessageAt = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn("verzilvering: ignoring a frame that is not JSON");
        return;
      }
      handleMessage(message);
    };
    ws.onclose = (event) => {
      if (ws !== call.ws) return;
      call.ws = null;
      socketLost(event.code);
    };
  }

  function send(message) {
    if (!call.ws || call.ws.readyState !== WebSocket.OPEN) return false;
    call.ws.send(JSON.stringify(message));
    return true;
  }

  function sendHello() {
    const hello = { type: "hello", v: PROTOCOL_VERSION, token: call.token };
    if (call.session) {
      hello.resume = {
        session_id: call.session.session_id,
        resume_key: call.session.resume_key,
        last_seq: call.lastSeq ?? 0,
      };
    }
    send(hello);
  }

  function socketLost(code) {
    stopPinging();
    if (call.state === "ended") return;
    if (code in CLOSE_ENDS_CALL) {
      endCall(CLOSE_ENDS_CALL[code]);
      return;
    }
    scheduleReconnect();
  }

  // Drops a socket that looks dead without waiting for the close handshake, which on a
  // broken network can take minutes.
  function abandonSocket() {
    const ws = call.ws;
    call.ws = null;
    if (ws) ws.close();
    socketLost(null);
  }

  function scheduleReconnect() {
    if (call.reconnectTimer !== null) return;
    call.state = "reconnecting";
    updateStatus();
    const base = reconnectDelay(call.reconnectAttempt, call.mediaFailures);
    call.reconnectAttempt += 1;
    // Jitter keeps a room full of kiosks from reconnecting in lockstep after a server blip.
    call.reconnectTimer = setTimeout(connect, base * (0.75 + Math.random() * 0.5));
  }

  window.addEventListener("online", () => {
    if (call.reconnectTimer === null) return;
    clearTimeout(call.reconnectTimer);
    connect();
  });

  function startPinging() {
    stopPinging();
    const { ping_interval_ms: interval, ping_timeout_ms: timeout } = call.welcome;
    call.pingTimer = setInterval(() => {
      if (Date.now() - call.lastMessageAt > timeout) {
        abandonSocket();
        return;
      }
      send({ type: "ping", ts: Date.now() });
    }, interval);
  }

  function stopPinging() {
    clearInterval(call.pingTimer);
    call.pingTimer = null;
  }

  // ---- Messages from the server ----

  function handleMessage(message) {
    // `resumed` reports the session's newest seq before the replay of older ones, so it
    // must not count as handled yet.
    if (Number.isInteger(message.seq) && message.type !== "resumed") {
      call.lastSeq = call.lastSeq === null ? message.seq : Math.max(call.lastSeq, message.seq);
    }
    const handler = handlers[message.type];
    if (handler) handler(message);
    hooks.onMessage(message, api);
  }

  const handlers = {
    welcome(message) {
      call.welcome = message;
      call.session = { session_id: message.session_id, resume_key: message.resume_key };
      call.selfId = message.participant?.id ?? null;
      call.permissions = new Set(message.participant?.permissions ?? []);
      call.reconnectAttempt = 0;
      startPinging();
      send({ type: "join", room: message.room, id: JOIN_REF });
      // Asking for the camera now lets the permission prompt overlap with joining.
      call.localMedia ??= openLocalMedia();
    },

    lobby() {
      call.state = "lobby";
      updateStatus();
    },

    async joined(message) {
      call.selfId = message.self_id;
      call.joined = true;
      call.participants.clear();
      for (const participant of message.participants) rememberParticipant(participant);
      call.lobby.clear();
      for (const participant of message.lobby ?? []) call.lobby.set(participant.participant_id, participant);
      if (message.room_state) call.roomState = { ...call.roomState, ...message.room_state };
      call.state = "connected";
      showRemoteMedia();
      updateStatus();
      applyMusicMode();
      const generation = call.generation;
      const stream = await call.localMedia;
      if (generation !== call.generation || call.state === "ended" || !stream) return;
      const audio = stream.getAudioTracks().length > 0;
      const video = stream.getVideoTracks().length > 0;
      if (!audio && !video) return;
      send({ type: "publish", audio, video });
      // Mute choices made before joining still hold in the new session.
      if (call.micMuted && audio) send({ type: "mute", kind: "audio", muted: true });
      if (call.cameraMuted && video) send({ type: "mute", kind: "video", muted: true });
    },

    resumed(message) {
      call.reconnectAttempt = 0;
      // Fresh TURN credentials: the old ones may have expired while the call went on.
      if (message.ice_servers) {
        call.welcome.ice_servers = message.ice_servers;
        if (call.pc) {
          try {
            call.pc.setConfiguration({ ...call.pc.getConfiguration(), iceServers: message.ice_servers });
          } catch (error) {
            console.warn("verzilvering: could not update the ICE servers", error.name);
          }
        }
      }
      // The join may have been lost with the old socket; a duplicate only earns
      // already_joined.
      if (!call.joined) send({ type: "join", room: call.welcome.room, id: JOIN_REF });
      call.state = call.joined ? "connected" : "connecting";
      startPinging();
      if (call.unsentAnswer && send(call.unsentAnswer)) call.unsentAnswer = null;
      updateStatus();
    },

    offer(message) {
      const generation = call.generation;
      call.negotiations = call.negotiations
        .then(() => answerOffer(message, generation))
        .catch((error) => console.error("verzilvering: could not answer the offer", error));
    },

    participant_joined(message) {
      call.lobby.delete(message.participant.participant_id);
      rememberParticipant(message.participant);
      showRemoteMedia();
      updateStatus();
    },

    participant_updated(message) {
      rememberParticipant(message.participant);
    },

    participant_left(message) {
      if (message.participant_id === call.selfId) {
        // "replaced": an earlier session of ours made way for this one; we stay.
        // (A replaced session itself hears `removed`, reason "replaced".)
        if (message.reason === "replaced") return;
        if (message.reason === "kicked") endCall("removed");
        else restartSession();
        return;
      }
      call.participants.delete(message.participant_id);
      for (const [mid, consumer] of call.consumersByMid) {
        if (consumer.participant_id === message.participant_id) call.consumersByMid.delete(mid);
      }
      showRemoteMedia();
      updateStatus();
    },

    track_unpublished(message) {
      for (const [mid, consumer] of call.consumersByMid) {
        if (consumer.track_id === message.track_id) call.consumersByMid.delete(mid);
      }
      showRemoteMedia();
    },

    mute_changed(message) {
      if (message.participant_id === call.selfId) {
        setMuted(message.kind === "audio" ? "audio" : "video", message.muted, { tellServer: false });
        if (message.muted && message.by !== call.selfId && message.kind === "audio") {
          showNotice(text.muted_by_host);
        }
        return;
      }
      const participant = call.participants.get(message.participant_id);
      if (!participant) return;
      participant[`${message.kind}_muted`] = message.muted;
      renderTileCaption(message.participant_id);
    },

    knock(message) {
      call.lobby.set(message.participant.participant_id, message.participant);
    },

    lobby_left(message) {
      call.lobby.delete(message.participant_id);
    },

    unmute_requested(message) {
      if (message.kind === "audio" && call.micMuted) {
        showNotice(text.unmute_requested);
        ui.mic.setAttribute("data-attention", "");
      }
    },

    room_updated(message) {
      call.roomState = { ...call.roomState, ...message.room };
      showRemoteMedia();
      applyMusicMode();
    },

    removed(message) {
      if (message.reason === "media_failed") {
        restartSession();
        return;
      }
      const reasons = { ended: "ended", replaced: "replaced", revoked: "link_invalid" };
      endCall(reasons[message.reason] ?? "removed");
    },

    denied() {
      endCall("denied");
    },

    // This node is going away (cluster drain or node loss); the socket closes next (1012).
    // Reconnect at once, resuming first; a refused resume starts over by itself.
    reconnect() {
      call.reconnectAttempt = 0;
    },

    // What the server wants this participant to send: small tiles for most, full quality
    // for the host and whoever is in the spotlight.
    publish_quality(message) {
      call.publishQuality = message.video ?? null;
      applyPublishQuality();
    },

    active_speaker(message) {
      call.activeSpeaker = message.participant_id ?? null;
      for (const [participantId, tile] of call.tiles) {
        tile.figure.classList.toggle("speaking", participantId === call.activeSpeaker);
      }
      ui.selfVideo.closest("figure")?.classList.toggle("speaking", call.activeSpeaker === call.selfId);
    },

    left() {
      endCall("left");
    },

    error(message) {
      const { code } = message;
      if (code === "resume_failed") {
        startOver();
      } else if (LINK_ERRORS.has(code)) {
        endCall("link_invalid");
      } else if (code in ACCESS_ERRORS) {
        endCall(ACCESS_ERRORS[code]);
      } else if (code === "room_full") {
        endCall("room_full");
      } else if (code === "forbidden" && message.ref === JOIN_REF) {
        endCall("forbidden");
      } else if (code === "forbidden") {
        showNotice(text.forbidden);
      } else if (code === "unavailable") {
        showNotice(text.unavailable);
      } else {
        // The rest are protocol slips (ours or the server's) or renegotiation races the
        // server recovers from by itself; nothing a participant could act on.
        console.warn("verzilvering: server error", code, message.message);
      }
    },
  };

  function rememberParticipant(participant) {
    if (participant.participant_id === call.selfId) return;
    call.participants.set(participant.participant_id, { ...participant });
    renderTileCaption(participant.participant_id);
  }

  // The old session is gone (resume refused): drop everything tied to it and say hello
  // again on the same socket, which has no session yet.
  function startOver() {
    forgetSession();
    sendHello();
  }

  // The session still exists but its media is dead (the server cannot restart ICE):
  // give up the seat and join again on a new socket.
  function restartSession() {
    call.mediaFailures += 1;
    if (call.mediaFailures >= MEDIA_FAILURES_BEFORE_NOTICE) showNotice(text.media_blocked);
    send({ type: "leave" });
    forgetSession();
    abandonSocket();
  }

  // Drops everything tied to the current session; the camera stays open.
  function forgetSession() {
    clearTimeout(call.mediaHealthyTimer);
    stopMediaConnectTimer();
    call.generation += 1;
    // The new session's transport knows no layout yet.
    call.layoutSent = "";
    call.negotiations = Promise.resolve();
    call.unsentAnswer = null;
    call.session = null;
    call.lastSeq = null;
    call.joined = false;
    call.participants.clear();
    call.lobby.clear();
    call.consumersByMid.clear();
    if (call.pc) call.pc.close();
    call.pc = null;
    showRemoteMedia();
    call.state = "connecting";
    updateStatus();
  }

  // ---- Media negotiation ----

  function peerConnection() {
    if (call.pc) return call.pc;
    const pc = new RTCPeerConnection({ iceServers: call.welcome.ice_servers ?? [] });
    pc.ontrack = () => showRemoteMedia();
    pc.onconnectionstatechange = () => {
      if (pc !== call.pc) return;
      clearTimeout(call.mediaHealthyTimer);
      if (pc.connectionState === "connected") {
        stopMediaConnectTimer();
        call.mediaHealthyTimer = setTimeout(mediaFlowed, MEDIA_HEALTHY_MS);
        if (ui.notice.textContent === text.media_blocked) hideNotice();
      }
      if (pc.connectionState === "failed") restartSession();
      else updateStatus();
    };
    call.pc = pc;
    return pc;
  }

  function stopMediaConnectTimer() {
    clearTimeout(call.mediaConnectTimer);
    call.mediaConnectTimer = null;
  }

  function mediaFlowed() {
    call.mediaFailures = 0;
  }

  async function answerOffer(offer, generation) {
    if (generation !== call.generation || call.state === "ended") return;
    const pc = peerConnection();
    // Set before the remote description so that ontrack, which fires inside it, can
    // already tell whose media arrives on which mid.
    call.consumersByMid = new Map(offer.consumers.map((consumer) => [consumer.mid, consumer]));
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    const publish = Object.entries(offer.publish ?? {});
    // Only await the camera when publishing: others should be visible while the
    // permission prompt is still open.
    const stream = publish.length ? await call.localMedia : null;
    for (const [kind, mid] of publish) {
      const transceiver = pc.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) continue;
      transceiver.direction = "sendonly";
      const track = (kind === "audio" ? stream?.getAudioTracks() : stream?.getVideoTracks())?.[0];
      await transceiver.sender.replaceTrack(track ?? null);
      if (kind === "video" && track) await setUpVideoLayers(transceiver.sender);
    }
    const answer = await pc.createAnswer();
    if (call.roomState.music_mode) answer.sdp = musicSdp(answer.sdp);
    await pc.setLocalDescription(answer);
    await iceGatheringComplete(pc);
    if (generation !== call.generation || call.state === "ended") return;
    showRemoteMedia();
    applyMusicMode();
    applyPublishQuality();
    const reply = { type: "answer", sdp: pc.localDescription.sdp, negotiation_id: offer.negotiation_id };
    call.unsentAnswer = send(reply) ? null : reply;
    if (pc.connectionState !== "connected" && call.mediaConnectTimer === null) {
      call.mediaConnectTimer = setTimeout(() => {
        call.mediaConnectTimer = null;
        if (pc === call.pc && pc.connectionState !== "connected") restartSession();
      }, MEDIA_CONNECT_TIMEOUT_MS);
    }
  }

  function iceGatheringComplete(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", onChange);
        resolve();
      };
      const onChange = () => {
        if (pc.iceGatheringState === "complete") finish();
      };
      const timer = setTimeout(finish, ICE_GATHERING_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", onChange);
    });
  }

  // Opus for music: stereo, 128 kbps, no discontinuous transmission. Only the next
  // negotiation carries this; see applyMusicMode for what changes at once.
  function musicSdp(sdp) {
    const opus = /a=rtpmap:(\d+) opus\/48000/i.exec(sdp);
    if (!opus) return sdp;
    const pt = opus[1];
    return sdp.replace(new RegExp(`a=fmtp:${pt} ([^\\r\\n]*)`), (_, params) => {
      const kept = params
        .split(";")
        .filter((p) => p && !/^(stereo|sprop-stereo|maxaveragebitrate|usedtx)=/.test(p.trim()));
      kept.push("stereo=1", "sprop-stereo=1", `maxaveragebitrate=${MUSIC_BITRATE}`, "usedtx=0");
      return `a=fmtp:${pt} ${kept.join(";")}`;
    });
  }

  // What music mode changes at once: the audio sender's bitrate cap, and for a host (the
  // one playing the music) the microphone's processing, which would treat music as noise.
  let musicApplied = false;
  // The microphone change in progress: a second call (the offer that music mode brings)
  // waits for it, so the bitrate never says "music" before the microphone does.
  let micChange = Promise.resolve();
  async function applyMusicMode() {
    const enabled = !!call.roomState.music_mode;
    const stream = ui.selfVideo.srcObject;
    const track = stream?.getAudioTracks()[0];
    if (track && call.permissions.has("moderate") && enabled !== musicApplied) {
      musicApplied = enabled;
      micChange = setMicProcessing(stream, track, !enabled);
    }
    musicApplied = enabled;
    await micChange;
    for (const sender of call.pc?.getSenders() ?? []) {
      if (sender.track?.kind !== "audio") continue;
      const parameters = sender.getParameters();
      if (!parameters.encodings?.length) continue;
      for (const encoding of parameters.encodings) {
        if (enabled) encoding.maxBitrate = MUSIC_BITRATE;
        else delete encoding.maxBitrate;
      }
      sender.setParameters(parameters).catch((error) => {
        console.warn("verzilvering: could not change the audio bitrate", error.name);
      });
    }
  }

  // Echo cancellation, noise suppression and gain control on or off. Browsers do not all
  // change these on a running track, so when asking does not work the microphone is
  // opened again with the new settings and swapped in without renegotiating.
  async function setMicProcessing(stream, track, processing) {
    const wanted = { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing };
    const matches = (t) => Object.entries(wanted).every(([key, value]) => t.getSettings()[key] === value);
    try {
      await track.applyConstraints(wanted);
    } catch (error) {
      console.warn("verzilvering: could not change microphone processing in place", error.name);
    }
    if (matches(track)) return;
    let fresh;
    try {
      const deviceId = track.getSettings().deviceId;
      const media = await navigator.mediaDevices.getUserMedia({
        audio: { ...wanted, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) },
      });
      fresh = media.getAudioTracks()[0];
    } catch (error) {
      console.warn("verzilvering: could not reopen the microphone", error.name);
      return;
    }
    if (call.state === "ended" || !fresh) {
      fresh?.stop();
      return;
    }
    fresh.enabled = track.enabled;
    for (const sender of call.pc?.getSenders() ?? []) {
      if (sender.track === track) await sender.replaceTrack(fresh);
    }
    stream.removeTrack(track);
    stream.addTrack(fresh);
    track.stop();
  }

  // The camera's layers: each simulcast encoding the answer took from the server's offer
  // (Chromium and Firefox both take the offer's rids as the answerer) at its size, and
  // VP8 temporal layers on each where the browser accepts a scalability mode (Chromium
  // does; Firefox ignores it and sends one temporal layer, which the server handles).
  async function setUpVideoLayers(sender) {
    const parameters = sender.getParameters();
    if (!parameters.encodings?.length) return;
    for (const encoding of parameters.encodings) {
      if (encoding.rid in SIMULCAST_SCALE) encoding.scaleResolutionDownBy = SIMULCAST_SCALE[encoding.rid];
    }
    for (const mode of [...TEMPORAL_MODES, null]) {
      for (const encoding of parameters.encodings) {
        if (mode) encoding.scalabilityMode = mode;
        else delete encoding.scalabilityMode;
      }
      try {
        await sender.setParameters(parameters);
        const taken = sender.getParameters().encodings?.[0]?.scalabilityMode ?? null;
        call.temporalMode = mode && taken === mode ? mode : null;
        return;
      } catch (error) {
        console.warn("verzilvering: the camera's layers were refused", mode, error.name);
      }
    }
  }

  // Caps the camera's sender as `publish_quality` asks (bitrate and picture height); each
  // simulcast layer keeps its own share of size and bitrate.
  function applyPublishQuality() {
    const wanted = call.publishQuality;
    const sender = call.pc?.getSenders().find((s) => s.track?.kind === "video");
    if (!wanted || !sender) return;
    const parameters = sender.getParameters();
    if (!parameters.encodings?.length) return;
    const height = sender.track.getSettings().height ?? 0;
    const base = wanted.max_height && height > wanted.max_height ? height / wanted.max_height : 1;
    for (const encoding of parameters.encodings) {
      const layer = SIMULCAST_SCALE[encoding.rid] ?? 1;
      if (wanted.max_bitrate_bps) encoding.maxBitrate = Math.round(wanted.max_bitrate_bps / (layer * layer));
      else delete encoding.maxBitrate;
      encoding.scaleResolutionDownBy = base * layer;
    }
    sender.setParameters(parameters).catch((error) => {
      console.warn("verzilvering: could not change the video quality", error.name);
    });
  }

  // ---- Local camera and microphone ----

  async function openLocalMedia() {
    if (!navigator.mediaDevices?.getUserMedia) {
      showNotice(text.no_media);
      return null;
    }
    const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };
    // A missing or refused camera should not also cost the participant their voice.
    const attempts = [{ audio: true, video }, { audio: true }, { video }];
    let stream = null;
    for (const constraints of attempts) {
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints);
        break;
      } catch (error) {
        console.warn("verzilvering: getUserMedia failed", constraints, error.name);
      }
    }
    if (call.state === "ended") {
      stream?.getTracks().forEach((track) => track.stop());
      return null;
    }
    const hasAudio = !!stream?.getAudioTracks().length;
    const hasVideo = !!stream?.getVideoTracks().length;
    if (!hasAudio && !hasVideo) showNotice(text.no_media);
    else if (!hasVideo) showNotice(text.no_camera);
    else if (!hasAudio) showNotice(text.no_microphone);
    if (stream) ui.selfVideo.srcObject = stream;
    ui.mic.disabled = !hasAudio;
    ui.camera.disabled = !hasVideo;
    setMuted("audio", call.micMuted, { tellServer: false, stream });
    setMuted("video", call.cameraMuted, { tellServer: false, stream });
    return stream;
  }

  // The microphone's and the camera's toggle: where the call keeps it, its button, its words.
  const toggles = {
    audio: { flag: "micMuted", button: ui.mic, on: "mic_on", off: "mic_off" },
    video: { flag: "cameraMuted", button: ui.camera, on: "camera_on", off: "camera_off" },
  };

  function setMuted(kind, muted, { tellServer = true, stream = null } = {}) {
    const toggle = toggles[kind];
    call[toggle.flag] = muted;
    applyMute(stream, kind, muted);
    toggle.button.textContent = muted ? text[toggle.off] : text[toggle.on];
    toggle.button.toggleAttribute("data-off", muted);
    toggle.button.setAttribute("aria-pressed", String(!muted));
    // The host's request to turn the microphone on is answered.
    if (kind === "audio" && !muted) ui.mic.removeAttribute("data-attention");
    if (tellServer && call.joined) send({ type: "mute", kind, muted });
  }

  // A disabled track keeps its place in the connection and sends silence or black, so
  // unmuting needs no renegotiation.
  function applyMute(stream, kind, muted) {
    const tracks = (stream ?? ui.selfVideo.srcObject)?.getTracks() ?? [];
    for (const track of tracks) if (track.kind === kind) track.enabled = !muted;
  }

  ui.mic.addEventListener("click", () => {
    if (call.micMuted) hideNotice();
    setMuted("audio", !call.micMuted);
  });
  ui.camera.addEventListener("click", () => setMuted("video", !call.cameraMuted));
  ui.leave.addEventListener("click", () => leave());
  ui.playSound.addEventListener("click", () => {
    ui.playSound.hidden = true;
    for (const tile of call.tiles.values()) play(tile.video);
  });

  function leave() {
    finish("left");
  }

  // Leaves the room and ends the call with `reason` (a key of the strings) on screen.
  function finish(reason) {
    if (call.state === "ended") return;
    send({ type: "leave" });
    endCall(reason);
  }

  // Closing the tab should free the seat now rather than after the resume grace.
  window.addEventListener("pagehide", () => {
    if (call.state !== "ended" && call.state !== "idle") send({ type: "leave" });
  });

  // ---- Remote participants on screen ----

  // Rebuilds the tiles from the consumers of the latest offer. Done from the offer rather
  // than per ontrack event because the server may reuse a mid for someone else's track,
  // which fires no new ontrack. With `tilesForAll`, everyone in the room gets a tile,
  // with or without media (the host console lists people who have no camera).
  function showRemoteMedia() {
    const tracksByParticipant = new Map();
    for (const transceiver of call.pc?.getTransceivers() ?? []) {
      const consumer = call.consumersByMid.get(transceiver.mid);
      if (!consumer) continue;
      const tracks = tracksByParticipant.get(consumer.participant_id) ?? [];
      tracks.push(transceiver.receiver.track);
      tracksByParticipant.set(consumer.participant_id, tracks);
    }
    const wanted = new Set(tracksByParticipant.keys());
    if (options.tilesForAll && call.state !== "ended") {
      for (const participantId of call.participants.keys()) wanted.add(participantId);
    }
    for (const [participantId, tile] of call.tiles) {
      if (!wanted.has(participantId)) {
        tile.figure.remove();
        call.tiles.delete(participantId);
      }
    }
    for (const participantId of wanted) {
      const tile = call.tiles.get(participantId) ?? createTile(participantId);
      const tracks = tracksByParticipant.get(participantId) ?? [];
      const current = tile.video.srcObject?.getTracks() ?? [];
      const unchanged =
        current.length === tracks.length && tracks.every((track) => current.includes(track));
      if (!unchanged) {
        tile.video.srcObject = tracks.length ? new MediaStream(tracks) : null;
        if (tracks.length) play(tile.video);
      }
      tile.figure.toggleAttribute("data-no-media", tracks.length === 0);
      renderTileCaption(participantId);
    }
    const selfTile = ui.selfVideo.closest("figure");
    selfTile?.classList.toggle("spotlight", !!call.selfId && call.roomState.spotlight === call.selfId);
    scheduleLayout();
  }

  // Tells the server how large each tile is shown (device pixels), so it forwards the
  // simulcast layer that fits; sent when the tiles settle after a change.
  function scheduleLayout() {
    clearTimeout(call.layoutTimer);
    call.layoutTimer = setTimeout(sendLayout, LAYOUT_DELAY_MS);
  }

  function sendLayout() {
    call.layoutTimer = null;
    if (call.state !== "connected") return;
    const scale = window.devicePixelRatio || 1;
    const tiles = [...call.tiles].map(([participantId, tile]) => ({
      participant_id: participantId,
      width: Math.round(tile.video.clientWidth * scale),
      height: Math.round(tile.video.clientHeight * scale),
    }));
    const layout = JSON.stringify(tiles);
    if (layout === call.layoutSent) return;
    if (send({ type: "layout", tiles })) call.layoutSent = layout;
  }

  if (typeof ResizeObserver === "function") new ResizeObserver(scheduleLayout).observe(ui.tiles);

  function createTile(participantId) {
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.dataset.participantId = participantId;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    figure.append(video, caption);
    ui.tiles.append(figure);
    const tile = { figure, video, caption };
    call.tiles.set(participantId, tile);
    renderTileCaption(participantId);
    return tile;
  }

  function renderTileCaption(participantId) {
    const tile = call.tiles.get(participantId);
    if (!tile) return;
    const participant = call.participants.get(participantId);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = participant?.name ?? "…";
    const badges = [];
    if (participant?.audio_muted) badges.push(text.muted_badge);
    if (participant && participant.connected === false) badges.push(text.away_badge);
    const spotlit = call.roomState.spotlight === participantId;
    if (spotlit) badges.push(text.spotlight_badge);
    tile.figure.classList.toggle("spotlight", spotlit);
    tile.figure.classList.toggle("speaking", participantId === call.activeSpeaker);
    tile.caption.replaceChildren(
      name,
      ...badges.map((label) => {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = label;
        return badge;
      }),
    );
    hooks.decorateTile(tile, participant ?? null);
  }

  function play(video) {
    video.play().catch((error) => {
      // Browsers may block sound that starts without a tap; offer one big button for it.
      if (error.name === "NotAllowedError") ui.playSound.hidden = false;
    });
  }

  // ---- Status, notices and the end ----

  function updateStatus() {
    const override = hooks.statusText();
    if (override && call.state !== "ended") {
      ui.status.textContent = override;
      return;
    }
    let key;
    if (call.state === "connecting" || call.state === "idle") key = "connecting";
    else if (call.state === "reconnecting") key = "reconnecting";
    else if (call.state === "lobby") key = "lobby";
    else if (call.state === "connected") {
      const media = call.pc?.connectionState;
      if (media === "disconnected" || media === "failed") key = "reconnecting";
      else key = call.participants.size ? "connected" : "waiting";
    } else return;
    ui.status.textContent = text[key];
  }

  function showNotice(message) {
    ui.notice.textContent = message;
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
  }

  function endCall(reason) {
    if (call.state === "ended") return;
    call.state = "ended";
    call.endReason = reason;
    call.generation += 1;
    stopPinging();
    clearTimeout(call.reconnectTimer);
    clearTimeout(call.mediaHealthyTimer);
    stopMediaConnectTimer();
    call.reconnectTimer = null;
    const ws = call.ws;
    call.ws = null;
    if (ws) ws.close(1000);
    if (call.pc) call.pc.close();
    call.pc = null;
    call.consumersByMid.clear();
    call.participants.clear();
    call.lobby.clear();
    showRemoteMedia();
    ui.selfVideo.srcObject?.getTracks().forEach((track) => track.stop());
    ui.selfVideo.srcObject = null;
    call.localMedia = null;
    ui.tiles.hidden = true;
    ui.controls.hidden = true;
    ui.playSound.hidden = true;
    hideNotice();
    ui.status.textContent = text[reason] ?? text.left;
    // A new link is needed when this one is refused, and a removed participant is kept out
    // until the host lets them back; anything else can simply retry.
    ui.rejoin.hidden = ["link_invalid", "ended", "denied", "removed"].includes(reason);
    ui.rejoin.href = location.href;
    hooks.onEnd(reason);
  }

  // ---- Statistics: what arrived from whom, and how well ----

  function participantOfInbound(entry, byTrackId) {
    return call.consumersByMid.get(entry.mid)?.participant_id ?? byTrackId.get(entry.trackIdentifier);
  }

  async function inboundByParticipant() {
    const pc = call.pc;
    if (!pc) return { entries: new Map(), report: null };
    const byTrackId = new Map();
    for (const transceiver of pc.getTransceivers()) {
      const consumer = call.consumersByMid.get(transceiver.mid);
      if (consumer) byTrackId.set(transceiver.receiver.track.id, consumer.participant_id);
    }
    const report = await pc.getStats();
    const entries = new Map();
    report.forEach((entry) => {
      if (entry.type !== "inbound-rtp") return;
      const participantId = participantOfInbound(entry, byTrackId);
      if (!participantId) return;
      const list = entries.get(participantId) ?? [];
      list.push(entry);
      entries.set(participantId, list);
    });
    return { entries, report };
  }

  async function stats() {
    const result = {};
    const { entries } = await inboundByParticipant();
    for (const [participantId, list] of entries) {
      const media = (result[participantId] ??= {});
      for (const entry of list) {
        // A reused mid can leave a stale entry behind; the busiest one is the live one.
        if (entry.kind === "video" && (entry.framesDecoded ?? 0) >= (media.video?.framesDecoded ?? -1)) {
          media.video = {
            width: entry.frameWidth ?? 0,
            height: entry.frameHeight ?? 0,
            framesDecoded: entry.framesDecoded ?? 0,
          };
        } else if (entry.kind === "audio" && (entry.packetsReceived ?? 0) >= (media.audio?.packetsReceived ?? -1)) {
          media.audio = {
            packetsReceived: entry.packetsReceived ?? 0,
            totalSamplesReceived: entry.totalSamplesReceived ?? 0,
          };
        }
      }
    }
    return result;
  }

  // Per participant: packet loss since the previous call (percent), jitter (ms) from
  // the inbound-rtp of their media, and the round trip (ms) to the server — the
  // remote-outbound-rtp's when the sender reports it, else the selected candidate pair's.
  async function quality() {
    const { entries, report } = await inboundByParticipant();
    const result = {};
    if (!report) return result;
    let pairRtt = null;
    const remoteRtt = new Map();
    report.forEach((entry) => {
      if (entry.type === "candidate-pair" && entry.nominated && entry.currentRoundTripTime !== undefined) {
        pairRtt = entry.currentRoundTripTime * 1000;
      }
      if (entry.type === "remote-outbound-rtp" && entry.roundTripTime !== undefined) {
        remoteRtt.set(entry.localId, entry.roundTripTime * 1000);
      }
    });
    const seen = new Set();
    for (const [participantId, list] of entries) {
      let received = 0;
      let lost = 0;
      let jitterMs = 0;
      let rttMs = null;
      let video = null;
      for (const entry of list) {
        if (entry.kind === "video" && (entry.framesDecoded ?? 0) >= (video?.framesDecoded ?? 0)) video = entry;
        const key = `${participantId}/${entry.id}`;
        seen.add(key);
        const previous = call.qualityPrevious.get(key) ?? { packetsReceived: 0, packetsLost: 0 };
        received += Math.max(0, (entry.packetsReceived ?? 0) - previous.packetsReceived);
        lost += Math.max(0, (entry.packetsLost ?? 0) - previous.packetsLost);
        call.qualityPrevious.set(key, {
          packetsReceived: entry.packetsReceived ?? 0,
          packetsLost: entry.packetsLost ?? 0,
        });
        jitterMs = Math.max(jitterMs, (entry.jitter ?? 0) * 1000);
        const rtt = remoteRtt.get(entry.id);
        if (rtt !== undefined) rttMs = Math.max(rttMs ?? 0, rtt);
      }
      // Nothing has ever arrived: there is nothing to judge yet.
      if (list.every((e) => !e.packetsReceived)) continue;
      const lossPct = received + lost > 0 ? (100 * lost) / (received + lost) : 0;
      const measured = {
        lossPct: Math.round(lossPct * 10) / 10,
        jitterMs: Math.round(jitterMs),
        rttMs: Math.round(rttMs ?? pairRtt ?? 0),
      };
      result[participantId] = {
        ...measured,
        level: qualityLevel(measured),
        // The simulcast / temporal layer the server forwards (docs/protocol.md, layout).
        videoHeight: video?.frameHeight ?? null,
        framesPerSecond: video?.framesPerSecond !== undefined ? Math.round(video.framesPerSecond) : null,
      };
    }
    for (const key of call.qualityPrevious.keys()) if (!seen.has(key)) call.qualityPrevious.delete(key);
    return result;
  }

  // What music mode changed, for tests and support staff: microphone processing and the
  // audio sender's bitrate cap.
  function mediaSettings() {
    const track = ui.selfVideo.srcObject?.getAudioTracks()[0];
    const settings = track?.getSettings() ?? {};
    const sender = call.pc?.getSenders().find((s) => s.track?.kind === "audio");
    const video = call.pc?.getSenders().find((s) => s.track?.kind === "video")?.getParameters().encodings?.[0];
    return {
      echoCancellation: settings.echoCancellation ?? null,
      noiseSuppression: settings.noiseSuppression ?? null,
      autoGainControl: settings.autoGainControl ?? null,
      maxBitrate: sender?.getParameters().encodings?.[0]?.maxBitrate ?? null,
      videoMaxBitrate: video?.maxBitrate ?? null,
      videoScaleDown: video?.scaleResolutionDownBy ?? null,
      videoLayers: (call.pc?.getSenders().find((s) => s.track?.kind === "video")?.getParameters().encodings ?? []).map(
        (e) => ({ rid: e.rid ?? null, scaleResolutionDownBy: e.scaleResolutionDownBy ?? 1, scalabilityMode: e.scalabilityMode ?? null }),
      ),
      temporalMode: call.temporalMode,
    };
  }

  function start(token) {
    if (token) call.token = token;
    if (call.state !== "idle") return;
    call.state = "connecting";
    updateStatus();
    connect();
  }

  const api = {
    get state() {
      return call.state;
    },
    get endReason() {
      return call.endReason;
    },
    get selfId() {
      return call.selfId;
    },
    get sessionId() {
      return call.session?.session_id ?? null;
    },
    get mediaFailures() {
      return call.mediaFailures;
    },
    get permissions() {
      return [...call.permissions];
    },
    get participants() {
      return Object.fromEntries([...call.participants].map(([id, p]) => [id, { ...p }]));
    },
    get lobby() {
      return Object.fromEntries([...call.lobby].map(([id, p]) => [id, { ...p }]));
    },
    get roomState() {
      return { ...call.roomState };
    },
    get micMuted() {
      return call.micMuted;
    },
    get tiles() {
      return [...call.tiles.keys()];
    },
    tile(participantId) {
      return call.tiles.get(participantId) ?? null;
    },
    participant(participantId) {
      return call.participants.get(participantId) ?? null;
    },
    get token() {
      return call.token;
    },
    send,
    start,
    stats,
    quality,
    mediaSettings,
    leave,
    finish,
    showNotice,
    hideNotice,
    updateStatus,
    redrawTiles: showRemoteMedia,
    // Simulates a network drop: the socket goes away without a `leave`.
    dropConnection: abandonSocket,
  };

  // A short-lived token, renewed while the page is open (docs/protocol.md, "Revocation"):
  // `tokenUrl` answers {token, expires_in_s} to the page's own session or invite; a
  // withdrawn one answers an error, and the next reconnect is refused.
  async function renewToken() {
    if (call.state === "ended") return;
    try {
      const response = await fetch(options.tokenUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        redirect: "error",
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      call.token = (await response.json()).token;
    } catch (error) {
      console.warn("verzilvering: could not renew the token", error.message);
    }
  }
  if (options.tokenUrl) setInterval(renewToken, options.tokenRefreshMs || 300000);
  api.renewToken = renewToken;

  updateStatus();
  if (options.autoStart !== false && call.token) start();
  return api;
}
