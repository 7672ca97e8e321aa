// Renders /openapi.json as a list of operations with their parameters and answers.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const ops = document.getElementById("ops");
  ops.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const box = el("div", "", "op");
      const title = el("h3");
      title.append(el("span", method.toUpperCase(), "method"), document.createTextNode(path));
      box.append(title, el("p", op.summary || ""));
      if (op.description) box.append(el("p", op.description));
      const params = op.parameters || [];
      if (params.length) {
        const list = el("ul");
        for (const p of params) {
          const s = p.schema || {};
          const kind = s.enum ? s.enum.join(" | ") : (s.type || (s.anyOf ? "value" : ""));
          const range = (s.minimum !== undefined ? " ≥ " + s.minimum : "") + (s.maximum !== undefined ? " ≤ " + s.maximum : "");
          const dflt = s.default !== undefined ? ", default " + JSON.stringify(s.default) : "";
          list.append(el("li", p.name + " (" + p.in + "): " + kind + range + dflt + (p.description ? " — " + p.description : "")));
        }
        box.append(list);
      }
      if (op.requestBody) box.append(el("p", "Body: " + (op.requestBody.description || Object.keys(op.requestBody.content).join(", "))));
      box.append(el("p", "Answers: " + Object.keys(op.responses || {}).join(", ")));
      ops.append(box);
    }
  }
}).catch((e) => { document.getElementById("ops").textContent = "Could not load /openapi.json: " + e.message; });
