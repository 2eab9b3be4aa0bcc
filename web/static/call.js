// The plain call page (/call?token=…): one call, the standard controls, nothing else.
import { createCall, readStrings, standardUi } from "./callcore.js";

const root = document.getElementById("call");
const call = createCall({ token: root.dataset.token, text: readStrings(), ui: standardUi() });

// Hooks for tests and for curious support staff.
window.verzilvering = call;
