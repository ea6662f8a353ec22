// Runs first in <body> (a file, not inline: the Content-Security-Policy allows no inline script) so that
// nhsuk-frontend's styles for enhanced components apply before the page is drawn.
document.body.classList.add("js-enabled");
if ("noModule" in HTMLScriptElement.prototype) {
  document.body.classList.add("nhsuk-frontend-supported");
}
