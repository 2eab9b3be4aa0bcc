// Verzilvering call page. Speaks the signalling protocol of docs/protocol.md over /ws and
// keeps one RTCPeerConnection for the whole session; the server is always the offerer.
// No framework and no build step, so the file served is the file in the repository.
"use strict";

(() => {
  const PROTOCOL_VERSION = 1;
  // The server does no trickle ICE, so answers wait for gathering; on a machine with an
  // unreachable STUN server this bounds the wait and sends the candidates found so far.
  const ICE_GATHERING_TIMEOUT_MS = 5000;
  const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
  // After these close codes reconnecting cannot help (see "Close codes" in the protocol).
  const CLOSE_ENDS_CALL = { 1000: "left", 4001: "link_invalid", 4003: "removed", 4004: "replaced" };
  const LINK_ERRORS = new Set(["token_invalid", "token_expired", "token_wrong_room", "unsupported_version"]);

  const root = document.getElementById("call");
  const token = root.dataset.token;
  const text = JSON.parse(document.getElementById("strings").textContent);
  const ui = {
    status: document.getElementById("status"),
    notice: document.getElementById("notice"),
    tiles: document.getElementById("tiles"),
    controls: document.getElementById("controls"),
    selfVideo: document.getElementById("self-video"),
    mic: document.getElementById("mic"),
    camera: document.getElementById("camera"),
    leave: document.getElementById("leave"),
    playSound: document.getElementById("play-sound"),
    rejoin: document.getElementById("rejoin"),
  };

  const call = {
    // "connecting" until joined, "connected", "reconnecting" while the socket is down,
    // "ended" once the call is over for good.
    state: "connecting",
    ws: null,
    welcome: null,
    session: null,
    lastSeq: null,
    selfId: null,
    joined: false,
    participants: new Map(),
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
    lastMessageAt: 0,
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
    const hello = { type: "hello", v: PROTOCOL_VERSION, token };
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
    const base = RECONNECT_DELAYS_MS[Math.min(call.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
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
  }

  const handlers = {
    welcome(message) {
      call.welcome = message;
      call.session = { session_id: message.session_id, resume_key: message.resume_key };
      call.selfId = message.participant?.id ?? null;
      call.reconnectAttempt = 0;
      startPinging();
      send({ type: "join", room: message.room });
      // Asking for the camera now lets the permission prompt overlap with joining.
      call.localMedia ??= openLocalMedia();
    },

    async joined(message) {
      call.selfId = message.self_id;
      call.joined = true;
      call.participants.clear();
      for (const participant of message.participants) rememberParticipant(participant);
      call.state = "connected";
      updateStatus();
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

    resumed() {
      call.reconnectAttempt = 0;
      // The join may have been lost with the old socket; a duplicate only earns
      // already_joined.
      if (!call.joined) send({ type: "join", room: call.welcome.room });
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
      rememberParticipant(message.participant);
      updateStatus();
    },

    participant_updated(message) {
      rememberParticipant(message.participant);
    },

    participant_left(message) {
      if (message.participant_id === call.selfId) {
        if (message.reason === "kicked") endCall("removed");
        else if (message.reason === "replaced") endCall("replaced");
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
        if (message.kind === "audio") setMicMuted(message.muted, { tellServer: false });
        else setCameraMuted(message.muted, { tellServer: false });
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

    removed() {
      endCall("removed");
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
      } else if (code === "room_full") {
        endCall("room_full");
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
    send({ type: "leave" });
    forgetSession();
    abandonSocket();
  }

  // Drops everything tied to the current session; the camera stays open.
  function forgetSession() {
    call.generation += 1;
    call.negotiations = Promise.resolve();
    call.unsentAnswer = null;
    call.session = null;
    call.lastSeq = null;
    call.joined = false;
    call.participants.clear();
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
      if (pc.connectionState === "failed" && pc === call.pc) restartSession();
      else updateStatus();
    };
    call.pc = pc;
    return pc;
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
    }
    await pc.setLocalDescription(await pc.createAnswer());
    await iceGatheringComplete(pc);
    if (generation !== call.generation || call.state === "ended") return;
    showRemoteMedia();
    const answer = { type: "answer", sdp: pc.localDescription.sdp, negotiation_id: offer.negotiation_id };
    call.unsentAnswer = send(answer) ? null : answer;
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
    setMicMuted(call.micMuted, { tellServer: false, stream });
    setCameraMuted(call.cameraMuted, { tellServer: false, stream });
    return stream;
  }

  function setMicMuted(muted, { tellServer = true, stream = null } = {}) {
    call.micMuted = muted;
    applyMute(stream, "audio", muted);
    ui.mic.textContent = muted ? text.mic_off : text.mic_on;
    ui.mic.toggleAttribute("data-off", muted);
    if (tellServer && call.joined) send({ type: "mute", kind: "audio", muted });
  }

  function setCameraMuted(muted, { tellServer = true, stream = null } = {}) {
    call.cameraMuted = muted;
    applyMute(stream, "video", muted);
    ui.camera.textContent = muted ? text.camera_off : text.camera_on;
    ui.camera.toggleAttribute("data-off", muted);
    if (tellServer && call.joined) send({ type: "mute", kind: "video", muted });
  }

  // A disabled track keeps its place in the connection and sends silence or black, so
  // unmuting needs no renegotiation.
  function applyMute(stream, kind, muted) {
    const tracks = (stream ?? ui.selfVideo.srcObject)?.getTracks() ?? [];
    for (const track of tracks) if (track.kind === kind) track.enabled = !muted;
  }

  ui.mic.addEventListener("click", () => {
    if (call.micMuted) hideNotice();
    setMicMuted(!call.micMuted);
  });
  ui.camera.addEventListener("click", () => setCameraMuted(!call.cameraMuted));
  ui.leave.addEventListener("click", () => leave());
  ui.playSound.addEventListener("click", () => {
    ui.playSound.hidden = true;
    for (const tile of call.tiles.values()) play(tile.video);
  });

  function leave() {
    if (call.state === "ended") return;
    send({ type: "leave" });
    endCall("left");
  }

  // Closing the tab should free the seat now rather than after the resume grace.
  window.addEventListener("pagehide", () => {
    if (call.state !== "ended") send({ type: "leave" });
  });

  // ---- Remote participants on screen ----

  // Rebuilds the tiles from the consumers of the latest offer. Done from the offer rather
  // than per ontrack event because the server may reuse a mid for someone else's track,
  // which fires no new ontrack.
  function showRemoteMedia() {
    const tracksByParticipant = new Map();
    for (const transceiver of call.pc?.getTransceivers() ?? []) {
      const consumer = call.consumersByMid.get(transceiver.mid);
      if (!consumer) continue;
      const tracks = tracksByParticipant.get(consumer.participant_id) ?? [];
      tracks.push(transceiver.receiver.track);
      tracksByParticipant.set(consumer.participant_id, tracks);
    }
    for (const [participantId, tile] of call.tiles) {
      if (!tracksByParticipant.has(participantId)) {
        tile.figure.remove();
        call.tiles.delete(participantId);
      }
    }
    for (const [participantId, tracks] of tracksByParticipant) {
      const tile = call.tiles.get(participantId) ?? createTile(participantId);
      const current = tile.video.srcObject?.getTracks() ?? [];
      const unchanged =
        current.length === tracks.length && tracks.every((track) => current.includes(track));
      if (!unchanged) {
        tile.video.srcObject = new MediaStream(tracks);
        play(tile.video);
      }
    }
  }

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
    tile.caption.replaceChildren(
      name,
      ...badges.map((label) => {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = label;
        return badge;
      }),
    );
  }

  function play(video) {
    video.play().catch((error) => {
      // Browsers may block sound that starts without a tap; offer one big button for it.
      if (error.name === "NotAllowedError") ui.playSound.hidden = false;
    });
  }

  // ---- Status, notices and the end ----

  function updateStatus() {
    let key;
    if (call.state === "connecting") key = "connecting";
    else if (call.state === "reconnecting") key = "reconnecting";
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
    call.generation += 1;
    stopPinging();
    clearTimeout(call.reconnectTimer);
    call.reconnectTimer = null;
    const ws = call.ws;
    call.ws = null;
    if (ws) ws.close(1000);
    if (call.pc) call.pc.close();
    call.pc = null;
    call.consumersByMid.clear();
    call.participants.clear();
    showRemoteMedia();
    ui.selfVideo.srcObject?.getTracks().forEach((track) => track.stop());
    ui.selfVideo.srcObject = null;
    ui.tiles.hidden = true;
    ui.controls.hidden = true;
    ui.playSound.hidden = true;
    hideNotice();
    ui.status.textContent = text[reason] ?? text.left;
    // A new link is needed when this one is refused; anything else can simply retry.
    ui.rejoin.hidden = reason === "link_invalid";
    ui.rejoin.href = location.href;
  }

  // ---- Hooks for tests and for curious support staff ----

  async function stats() {
    const result = {};
    const pc = call.pc;
    if (!pc) return result;
    const participantByTrackId = new Map();
    for (const transceiver of pc.getTransceivers()) {
      const consumer = call.consumersByMid.get(transceiver.mid);
      if (consumer) participantByTrackId.set(transceiver.receiver.track.id, consumer.participant_id);
    }
    const report = await pc.getStats();
    report.forEach((entry) => {
      if (entry.type !== "inbound-rtp") return;
      const participantId =
        call.consumersByMid.get(entry.mid)?.participant_id ?? participantByTrackId.get(entry.trackIdentifier);
      if (!participantId) return;
      const media = (result[participantId] ??= {});
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
    });
    return result;
  }

  window.verzilvering = {
    get state() {
      return call.state;
    },
    get selfId() {
      return call.selfId;
    },
    get sessionId() {
      return call.session?.session_id ?? null;
    },
    get participants() {
      return Object.fromEntries([...call.participants].map(([id, p]) => [id, { ...p }]));
    },
    get tiles() {
      return [...call.tiles.keys()];
    },
    stats,
    leave,
    // Simulates a network drop: the socket goes away without a `leave`.
    dropConnection: abandonSocket,
  };

  updateStatus();
  connect();
})();
