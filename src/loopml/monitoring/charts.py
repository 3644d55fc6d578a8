"""Self-contained SVG charts for HTML reports (lines, paired bars): no JavaScript, no CDN, readable offline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str | None = None


@dataclass(frozen=True)
class Marker:
    """A vertical line at x with a label (an event on a time axis)."""

    x: float
    label: str
    color: str = "#6b7280"


@dataclass(frozen=True)
class LineChart:
    title: str
    series: Sequence[Series]
    x_labels: dict[float, str] = field(default_factory=dict)
    markers: Sequence[Marker] = ()
    thresholds: Sequence[tuple[float, str]] = ()
    y_range: tuple[float, float] | None = None
    width: int = 860
    height: int = 280

    def to_svg(self) -> str:
        left, right, top, bottom = 56, 16, 36, 48
        plot_w, plot_h = self.width - left - right, self.height - top - bottom
        xs = [x for s in self.series for x, y in s.points if _finite(y)] + [m.x for m in self.markers]
        ys = [y for s in self.series for _, y in s.points if _finite(y)] + [t for t, _ in self.thresholds]
        x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)
        y_min, y_max = self.y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))
        x_max = x_max if x_max > x_min else x_min + 1
        y_max = y_max if y_max > y_min else y_min + 1

        def px(x: float) -> float:
            return left + (x - x_min) / (x_max - x_min) * plot_w

        def py(y: float) -> float:
            return top + plot_h - (y - y_min) / (y_max - y_min) * plot_h

        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" aria-label="{escape(self.title)}" '
            'font-family="system-ui, sans-serif" font-size="11">',
            f'<text x="{left}" y="20" font-size="14" font-weight="600">{escape(self.title)}</text>',
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f9fafb" stroke="#e5e7eb"/>',
        ]
        for i in range(5):
            value = y_min + (y_max - y_min) * i / 4
            parts.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{py(value):.1f}" y2="{py(value):.1f}" stroke="#e5e7eb"/>'
                f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end" fill="#374151">{value:.2f}</text>'
            )
        for x, label in self.x_labels.items():
            parts.append(
                f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#374151">{escape(label)}</text>'
            )
        for value, label in self.thresholds:
            parts.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
                f'stroke="#f59e0b" stroke-dasharray="6 4"/><text x="{left + plot_w - 4}" y="{py(value) - 4:.1f}" '
                f'text-anchor="end" fill="#b45309">{escape(label)}</text>'
            )
        for index, marker in enumerate(self.markers):
            label_y = top + 12 + 12 * (index % 3)
            parts.append(
                f'<line x1="{px(marker.x):.1f}" x2="{px(marker.x):.1f}" y1="{top}" y2="{top + plot_h}" '
                f'stroke="{marker.color}" stroke-dasharray="3 3"/><text x="{px(marker.x) + 3:.1f}" y="{label_y}" '
                f'fill="{marker.color}">{escape(marker.label)}</text>'
            )
        for index, series in enumerate(self.series):
            color = series.color or PALETTE[index % len(PALETTE)]
            for segment in _segments(series.points):
                path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
                if len(segment) == 1:  # a lone point draws no line: show it as a dot
                    ((x, y),) = segment
                    parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
            legend_x = left + 8 + min(170, plot_w // max(len(self.series), 1)) * index
            parts.append(
                f'<rect x="{legend_x}" y="{self.height - 16}" width="12" height="4" fill="{color}"/>'
                f'<text x="{legend_x + 16}" y="{self.height - 11}" fill="#111827">{escape(series.name)}</text>'
            )
        parts.append("</svg>")
        return "".join(parts)


@dataclass(frozen=True)
class BarChart:
    """Side-by-side bars per label, one colour per series (a reference and a current distribution)."""

    title: str
    labels: Sequence[str]
    series: Sequence[tuple[str, Sequence[float]]]
    width: int = 420
    height: int = 220

    def to_svg(self) -> str:
        left, right, top, bottom = 44, 8, 32, 40
        plot_w, plot_h = self.width - left - right, self.height - top - bottom
        values = [v for _, vs in self.series for v in vs if _finite(v)]
        y_max = max(values) if values and max(values) > 0 else 1.0
        slot = plot_w / max(len(self.labels), 1)
        bar = slot * 0.8 / max(len(self.series), 1)
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" aria-label="{escape(self.title)}" '
            'font-family="system-ui, sans-serif" font-size="10">',
            f'<text x="{left}" y="18" font-size="13" font-weight="600">{escape(self.title)}</text>',
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f9fafb" stroke="#e5e7eb"/>',
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" fill="#374151">{y_max:.0%}</text>',
            f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" fill="#374151">0%</text>',
        ]
        for s_index, (name, shares) in enumerate(self.series):
            color = PALETTE[s_index % len(PALETTE)]
            for i, share in enumerate(shares):
                if not _finite(share) or share <= 0:
                    continue
                height = share / y_max * plot_h
                x = left + i * slot + slot * 0.1 + s_index * bar
                parts.append(
                    f'<rect x="{x:.1f}" y="{top + plot_h - height:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                    f'fill="{color}" opacity="0.85"><title>{escape(name)} {escape(self.labels[i])}: {share:.1%}</title></rect>'
                )
            parts.append(
                f'<rect x="{left + 8 + 110 * s_index}" y="{self.height - 12}" width="10" height="6" fill="{color}"/>'
                f'<text x="{left + 22 + 110 * s_index}" y="{self.height - 6}" fill="#111827">{escape(name)}</text>'
            )
        step = max(1, len(self.labels) // 6)
        for i in range(0, len(self.labels), step):
            x = left + (i + 0.5) * slot
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 12}" text-anchor="middle" fill="#374151">'
                f"{escape(self.labels[i][:12])}</text>"
            )
        parts.append("</svg>")
        return "".join(parts)


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def _segments(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Split a series at missing values so a gap shows as a gap, not as a line through it."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if _finite(y):
            segments[-1].append((x, y))
        elif segments[-1]:
            segments.append([])
    return [s for s in segments if s]
