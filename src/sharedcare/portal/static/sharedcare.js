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

// Before a staff session's idle end (never its cap), a notice with "Stay signed in": typing in a form renews
// nothing, so a clinician writing a long reason would otherwise lose it to the sign-in page when she sends
// it. The button renews the session without leaving the page (POST /session/stay with the page's CSRF
// token). At the cap there is nothing to renew: the notice says she must sign in again. Times are counted
// from when the page arrived (the server says how many seconds are left), so a wrong clock does not matter.
const session = document.getElementById("session-ends");

if (session && session.dataset.endsIn) {
  const arrived = Date.now();
  let endsAt = arrived + Number(session.dataset.endsIn) * 1000;
  let capAt = arrived + Number(session.dataset.capIn) * 1000;
  const lead = Number(session.dataset.warn) * 1000;
  let timer = null;
  let notice = null;
  let before = null; // what had focus when the notice took it: it goes back there

  const close = () => {
    if (notice) {
      notice.remove();
      notice = null;
    }
    if (before && document.contains(before)) {
      before.focus();
    }
  };

  const stay = async (button, message) => {
    button.disabled = true;
    const answer = await fetch(session.dataset.renew, {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      body: new URLSearchParams({ csrf_token: session.dataset.csrf }),
    }).catch(() => null);
    if (!answer || !answer.ok) {
      message.textContent = "Your session could not be kept going. Copy anything you have typed, then sign in again.";
      button.remove();
      return;
    }
    const left = await answer.json();
    const now = Date.now();
    endsAt = now + left.ends_in * 1000;
    capAt = now + left.cap_in * 1000;
    session.textContent = left.says;
    close();
    plan();
  };

  const warn = () => {
    const atCap = endsAt >= capAt;
    const minutes = Math.max(1, Math.ceil((endsAt - Date.now()) / 60000));
    before = document.activeElement;
    notice = document.createElement("div");
    notice.className = "nhsuk-inset-text sc-session-notice";
    notice.setAttribute("role", "alertdialog");
    notice.setAttribute("aria-labelledby", "session-notice-heading");
    notice.setAttribute("aria-describedby", "session-notice-text");
    const heading = document.createElement("h2");
    heading.className = "nhsuk-heading-s";
    heading.id = "session-notice-heading";
    heading.textContent = `Your session will end in ${minutes} minute${minutes === 1 ? "" : "s"}`;
    const message = document.createElement("p");
    message.id = "session-notice-text";
    notice.append(heading, message);
    if (atCap) {
      message.textContent = "This is the longest a session can last. Save or copy anything you have typed: you will need to sign in again.";
      notice.tabIndex = -1;
      const dismiss = document.createElement("button");
      dismiss.type = "button";
      dismiss.className = "nhsuk-button nhsuk-button--secondary";
      dismiss.textContent = "Close";
      dismiss.addEventListener("click", close);
      notice.append(dismiss);
      session.after(notice);
      notice.focus();
    } else {
      message.textContent = "You have not opened a page for a while. Anything you have typed is kept if you stay signed in.";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "nhsuk-button";
      button.textContent = "Stay signed in";
      button.addEventListener("click", () => stay(button, message));
      notice.append(button);
      session.after(notice);
      button.focus();
    }
    notice.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        close();
      }
    });
  };

  const plan = () => {
    clearTimeout(timer);
    timer = setTimeout(warn, Math.max(0, Math.min(endsAt, capAt) - lead - Date.now()));
  };

  plan();
}
