// Component libraries left out of the page (dashboard/index_page.py) are loaded here: when a
// view that needs one is opened (the clientside callback `bmap.viewReady` waits for it before
// the server renders the view), or in the background once the first view is drawn. plotly.js,
// which the first view (an HTML map) does not need, is loaded in the background too: dcc's
// Graph uses `window.Plotly` when it is already there.
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

  function loadPlotly() {
    if (window.Plotly || !window._dashPlotlyJSURL) {
      return Promise.resolve();
    }
    if (!pending.plotly) {
      pending.plotly = loadScript(window._dashPlotlyJSURL);
      pending.plotly.catch(function () { delete pending.plotly; });
    }
    return pending.plotly;
  }

  // Background load once the first view is on screen and the browser has nothing else to do, so
  // the other views usually open without waiting for plotly.js or the grid library.
  function prefetchWhenDrawn(triesLeft) {
    if (!document.querySelector(".bm-ice-node, .js-plotly-plot .main-svg")) {
      if (triesLeft > 0) {
        setTimeout(function () { prefetchWhenDrawn(triesLeft - 1); }, 500);
      }
      return;
    }
    const idle = window.requestIdleCallback || function (f) { return setTimeout(f, 300); };
    idle(function () {
      let chain = loadPlotly();
      for (const lib of Object.keys(lazyUrls())) {
        chain = chain.then(function () { return loadLibrary(lib); });
      }
      chain.catch(function (err) { console.warn(err.message); });
    }, { timeout: 5000 });
  }
  window.addEventListener("load", function () { setTimeout(function () { prefetchWhenDrawn(60); }, 500); });
})();
