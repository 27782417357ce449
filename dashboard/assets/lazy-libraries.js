// Component libraries left out of the page (dashboard/index_page.py) are loaded here: when a
// view that needs one is opened (the clientside callback `bmap.viewReady` waits for it before
// the server renders the view), or in the background once the first view is drawn.
(function () {
  "use strict";
  const VIEW_LIBRARIES = { requests: ["dash_ag_grid"] };
  const pending = {};

  function lazyUrls() {
    const meta = document.querySelector('meta[name="bmap-lazy-scripts"]');
    const out = {};
    if (!meta || !meta.content) {
      return out;
    }
    for (const part of meta.content.split(" ")) {
      const eq = part.indexOf("=");
      if (eq > 0) {
        out[part.slice(0, eq)] = part.slice(eq + 1).split(",");
      }
    }
    return out;
  }

  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      const s = document.createElement("script");
      s.src = src;
      s.async = false;
      s.onload = function () { resolve(); };
      s.onerror = function () { reject(new Error("bottleneck-map: could not load " + src)); };
      document.head.appendChild(s);
    });
  }

  function loadLibrary(lib) {
    if (window[lib]) {
      return Promise.resolve();
    }
    if (!pending[lib]) {
      const urls = lazyUrls()[lib] || [];
      pending[lib] = urls.reduce(function (p, u) { return p.then(function () { return loadScript(u); }); },
                                 Promise.resolve());
      pending[lib].catch(function () { delete pending[lib]; });
    }
    return pending[lib];
  }

  const ns = Object.assign({}, (window.dash_clientside || {}).bmap, {
    viewReady: function (tab) {
      const libs = VIEW_LIBRARIES[tab] || [];
      return Promise.all(libs.map(loadLibrary)).then(function () { return tab; });
    },
  });
  window.dash_clientside = Object.assign({}, window.dash_clientside, { bmap: ns });

  // Background load once a figure is on screen and the browser has nothing else to do, so the
  // request explorer usually opens without waiting for its grid library.
  function prefetchWhenDrawn(triesLeft) {
    if (!document.querySelector(".js-plotly-plot .main-svg")) {
      if (triesLeft > 0) {
        setTimeout(function () { prefetchWhenDrawn(triesLeft - 1); }, 500);
      }
      return;
    }
    const idle = window.requestIdleCallback || function (f) { return setTimeout(f, 300); };
    idle(function () {
      for (const lib of Object.keys(lazyUrls())) {
        loadLibrary(lib).catch(function (err) { console.warn(err.message); });
      }
    }, { timeout: 5000 });
  }
  window.addEventListener("load", function () { setTimeout(function () { prefetchWhenDrawn(60); }, 500); });
})();
