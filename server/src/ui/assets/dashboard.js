// The dashboard's only script: hands the failure-ratio history that the server put in
// #history-data to Chart.js (with its annotation plugin for the breaker threshold and
// the breaker's transitions), and updates the plot after each htmx refresh.
(function () {
  "use strict";
  var chart = null;

  function markColor(mark) {
    if (mark.to === "open") return "#c62828";
    if (mark.to === "half_open") return "#ef6c00";
    return "#2e7d32";
  }

  function markLabel(mark) {
    if (mark.action === "rollout.start") return "started";
    if (mark.action === "rollout.resume") return "resumed";
    return "breaker " + String(mark.to).replace("_", " ");
  }

  function annotations(history) {
    var all = {
      threshold: {
        type: "line",
        yMin: history.threshold_percentage,
        yMax: history.threshold_percentage,
        borderColor: "#c62828",
        borderDash: [6, 4],
        borderWidth: 2,
        label: {
          display: true,
          content: "breaker threshold " + history.threshold_percentage + " %",
          position: "start",
          backgroundColor: "rgba(198, 40, 40, 0.85)",
        },
      },
    };
    history.marks.forEach(function (mark, i) {
      all["mark" + i] = {
        type: "line",
        xMin: mark.seconds,
        xMax: mark.seconds,
        borderColor: markColor(mark),
        borderWidth: 2,
        label: {
          display: true,
          content: markLabel(mark),
          position: i % 2 === 0 ? "end" : "center",
          backgroundColor: markColor(mark),
        },
      };
    });
    return all;
  }

  function draw() {
    var holder = document.getElementById("history-data");
    var canvas = document.getElementById("failure-plot");
    if (!holder || !canvas || !window.Chart) return;
    var history = JSON.parse(holder.getAttribute("data-history"));
    var points = history.points.map(function (p) {
      return { x: p.seconds, y: p.failure_percent };
    });
    var top = Math.min(100, Math.max(history.threshold_percentage * 2, 10));
    if (chart) {
      chart.data.datasets[0].data = points;
      chart.options.plugins.annotation.annotations = annotations(history);
      chart.update("none");
      return;
    }
    if (window["chartjs-plugin-annotation"]) {
      window.Chart.register(window["chartjs-plugin-annotation"]);
    }
    chart = new window.Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          {
            label: "failure ratio (%)",
            data: points,
            stepped: true,
            borderColor: "#1565c0",
            backgroundColor: "#1565c0",
            pointRadius: 2,
          },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: {
            type: "linear",
            min: 0,
            title: { display: true, text: "seconds since the rollout was created" },
          },
          y: {
            min: 0,
            suggestedMax: top,
            title: { display: true, text: "failure ratio (%)" },
          },
        },
        plugins: { annotation: { annotations: annotations(history) } },
      },
    });
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
