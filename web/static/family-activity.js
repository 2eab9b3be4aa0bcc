// A family member joins an activity: the server puts them in the waiting room (that is
// the knock) until a host lets them in; then it is the ordinary call.
import { createCall, readStrings, standardUi } from "./callcore.js";

const root = document.getElementById("call");
const call = createCall({
  token: root.dataset.token,
  tokenUrl: `${location.pathname}/token`,
  tokenRefreshMs: Number(root.dataset.tokenRefreshMs),
  text: readStrings(),
  ui: standardUi(),
  onEnd() {
    document.getElementById("back-link").hidden = false;
  },
});

window.verzilvering = call;
