// Progressive enhancement only: every page works without this file.
import { initAll } from "./nhsuk/nhsuk-frontend.min.js";

initAll();

// A page the browser's back/forward cache restores (Chrome keeps even a no-store page while no cookie
// changes) is loaded afresh, so the server decides again: Back must not show a record whose basis has
// ended, or that the patient has since objected to, without asking (and auditing).
window.addEventListener("pageshow", (event) => {
  if (event.persisted) {
    window.location.reload();
  }
});

// Record tabs. On a tablet or wider, one panel shows at a time. Each tab stays an ordinary link in the
// tab order, so Tab and Enter reach every one of them (nhsuk-frontend's own tabs need the arrow keys);
// on a phone, and without JavaScript, the panels follow one another under a list of links.
const wide = window.matchMedia("(min-width: 40.0625em)");

for (const tabs of document.querySelectorAll("[data-sc-tabs]")) {
  const links = [...tabs.querySelectorAll(".nhsuk-tabs__tab")];
  const panels = links.map((link) => document.getElementById(link.hash.slice(1)));

  const show = (index) => {
    links.forEach((link, i) => {
      const selected = i === index;
      link.parentElement.classList.toggle("nhsuk-tabs__list-item--selected", selected);
      if (selected) {
        link.setAttribute("aria-current", "true");
      } else {
        link.removeAttribute("aria-current");
      }
      panels[i].classList.toggle("nhsuk-tabs__panel--hidden", !selected);
    });
  };

  show(Math.max(0, links.findIndex((link) => link.hash === window.location.hash)));
  links.forEach((link, i) => {
    link.addEventListener("click", (event) => {
      if (!wide.matches) {
        return;
      }
      event.preventDefault();
      show(i);
      history.replaceState(null, "", link.hash);
      panels[i].setAttribute("tabindex", "-1");
      panels[i].focus({ preventScroll: true });
    });
  });
}
