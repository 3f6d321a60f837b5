// berth web interface: optional niceties. Every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons next to pull lines and commands.
  for (const button of document.querySelectorAll("button.copy-button")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const text = button.dataset.copy;
      try {
        await navigator.clipboard.writeText(text);
      } catch (e) {
        const input = button.parentElement.querySelector("textarea");
        input.select();
        document.execCommand("copy");
      }
      button.textContent = "Copied";
      button.setAttribute("aria-live", "polite");
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
  // A read-only command selects itself whole when focused.
  for (const input of document.querySelectorAll(".copy textarea")) {
    input.addEventListener("focus", () => input.select());
  }
  // "/" jumps to the filter, as on many sites.
  const filter = document.querySelector(".filter input[type=search]");
  if (filter) {
    document.addEventListener("keydown", (e) => {
      if (e.key === "/" && document.activeElement.tagName !== "INPUT") {
        e.preventDefault();
        filter.focus();
      }
    });
  }
});
