/**
 * Audit (session 28, lens: honest prompts and the context-window filter). The gateway estimates a request's
 * prompt with a character-class approximation (routing/tokens.ts, APPROXIMATE) and leaves out upstreams whose
 * `context_window` the estimate says it would not fit (README `context_window` row). An over-estimate refuses
 * locally (400 `context_length_exceeded`, no upstream asked) a request the provider would have served.
 *
 * Each case below is a realistic prompt of one kind, sized by the EXACT o200k tokenizer to ~90 % of its model's
 * window (no `max_tokens`, so ~11 % of room for the estimate's error), sent through a real gateway to a real
 * node:http upstream that has that window: it must be SENT. Test names carry the estimate/exact ratio.
 */
import type { ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  APPROXIMATE,
  estimatePromptTokens,
  estimateTextTokens,
  loadTokenizer,
  tokenizerReady,
} from '../../src/routing/tokens.js';
import { closeAfterAll } from '../helpers/cleanup.js';
import { postChat, startGateway, type TestGateway } from '../helpers/gateway.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';
import { mulberry32 } from '../helpers/random.js';

type Json = Record<string, unknown>;

await loadTokenizer();
if (!tokenizerReady()) throw new Error('o200k tokenizer did not load: the exact counts would be estimates');

const EXACT = { exactBudgetChars: 1e9 } as const;
const exactText = (s: string): number => estimateTextTokens(s, EXACT);

// ---------------------------------------------------------------------------------------------------------
// Deterministic, realistic content.

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const hex = (r: Rand, n: number): string =>
  Array.from({ length: n }, () => '0123456789abcdef'[Math.floor(r() * 16)]).join('');
const uuid = (r: Rand): string =>
  `${hex(r, 8)}-${hex(r, 4)}-4${hex(r, 3)}-${pick(r, ['8', '9', 'a', 'b'])}${hex(r, 3)}-${hex(r, 12)}`;
const iso = (r: Rand, base: number): string => new Date(base + int(r, 0, 86_400_000 * 30)).toISOString();

const WORDS = {
  noun: [
    'service',
    'request',
    'cache',
    'user',
    'order',
    'invoice',
    'session',
    'token',
    'record',
    'payload',
    'queue',
    'worker',
    'account',
    'report',
    'config',
    'metric',
    'event',
    'batch',
    'file',
    'item',
  ],
  verb: [
    'load',
    'parse',
    'fetch',
    'update',
    'validate',
    'build',
    'compute',
    'resolve',
    'render',
    'sync',
    'merge',
    'flush',
    'apply',
    'collect',
    'normalize',
  ],
  adj: ['pending', 'active', 'stale', 'primary', 'cached', 'remote', 'local', 'default', 'raw', 'final'],
  first: [
    'Alice',
    'Bob',
    'Carol',
    'David',
    'Eve',
    'Frank',
    'Grace',
    'Heidi',
    'Ivan',
    'Judy',
    'Mallory',
    'Niaj',
    'Olivia',
    'Peggy',
    'Rupert',
    'Sybil',
    'Trent',
    'Victor',
    'Walter',
    'Yasmin',
  ],
  last: [
    'Smith',
    'Johnson',
    'Garcia',
    'Müller',
    'Rossi',
    'Nakamura',
    'Kowalski',
    'Dubois',
    'Okafor',
    'Silva',
    'Patel',
    'Nguyen',
    'Andersson',
    'Lopez',
    'Fischer',
  ],
  city: [
    'Berlin',
    'São Paulo',
    'Tokyo',
    'Lagos',
    'Toronto',
    'Melbourne',
    'Mumbai',
    'Zürich',
    'Austin',
    'Seoul',
    'Madrid',
    'Nairobi',
  ],
};
const camel = (r: Rand): string => {
  const v = pick(r, WORDS.verb);
  const n = pick(r, WORDS.noun);
  return v + n[0]!.toUpperCase() + n.slice(1);
};
const snake = (r: Rand): string => `${pick(r, WORDS.verb)}_${pick(r, WORDS.adj)}_${pick(r, WORDS.noun)}`;

const PROSE = [
  'The committee met on Tuesday to review the quarterly results, and most members agreed that the new pricing model had worked better than expected.',
  'However, several regional managers pointed out that customer churn in the smaller markets had risen slightly, which could offset the gains next year.',
  'She walked along the river for nearly an hour, thinking about the letter she had received that morning and what it might mean for her family.',
  "It's worth noting that the original design was never intended to handle this much traffic; it was built as a prototype and simply never replaced.",
  'In the late nineteenth century, the railway transformed the small market town into a busy junction, bringing workers, merchants and new ideas.',
  'When the storm finally passed, the villagers came out to inspect the damage: fallen trees, flooded cellars, and a barn roof lying in the field.',
  'Our recommendation is straightforward. Migrate the remaining services before the end of the fiscal year, and retire the legacy cluster in March.',
  'He had always believed that good writing was mostly rewriting, so he kept every draft, even the ones he was embarrassed to read again.',
  'Researchers found that participants who slept fewer than six hours a night performed significantly worse on memory tasks than those who slept eight.',
  'The museum’s new wing, designed by a young architect from Copenhagen, opens to the public next spring after almost four years of construction.',
  'If you have any questions about your order, please reply to this email or contact our support team, which is available around the clock.',
  'Despite the setbacks, the team shipped the release on time, although two minor features were postponed to the following sprint.',
  'Economists disagree about whether the policy will reduce inflation, but nearly all of them expect higher borrowing costs for small businesses.',
  'The old lighthouse keeper knew every rock in the bay by name, and he told stories about the ships that had not been so lucky.',
  'To summarize: the experiment confirmed our hypothesis, but the sample was small, and we should repeat it with a larger and more diverse group.',
  'Please make sure that all expense reports are submitted by Friday, so that finance can close the books before the holiday weekend.',
  'Nobody expected the quiet student in the back row to win the national competition, least of all the student herself.',
  'The contract may be terminated by either party with thirty days’ written notice, provided that all outstanding invoices have been paid in full.',
  'Across the valley, the vineyards turned gold and red as the harvest began, and the smell of crushed grapes filled the evening air.',
  'A well-written error message tells the user what happened, why it happened, and what they can do next; most of ours do none of these.',
];

function prose(r: Rand): string {
  const n = int(r, 3, 6);
  return Array.from({ length: n }, () => pick(r, PROSE)).join(' ') + '\n\n';
}

function pythonCode(r: Rand): string {
  const fn = snake(r);
  const arg = pick(r, ['items', 'records', 'rows', 'entries', 'payloads']);
  const attr = pick(r, ['score', 'size', 'count', 'priority', 'weight']);
  return `    def ${fn}(self, ${arg}: list[dict[str, Any]], *, limit: int = ${int(r, 10, 500)}) -> list[${pick(r, ['str', 'int', 'Record', 'dict'])}]:
        """${pick(r, PROSE).slice(0, 80)}"""
        if not ${arg}:
            raise ValueError(f"${arg} must not be empty (got {len(${arg})})")
        result = []
        for index, item in enumerate(${arg}):
            if item.get("${attr}", 0) > ${(r() * 10).toFixed(2)} and index < limit:
                result.append(self._${pick(r, WORDS.verb)}(item, strict=${pick(r, ['True', 'False'])}))
            elif item.get("${pick(r, WORDS.adj)}"):
                logger.debug("skipping %s: %r", index, item)
        return sorted(result, key=lambda x: x.${attr}, reverse=True)

`;
}

function typescriptCode(r: Rand): string {
  const fn = camel(r);
  const T = pick(r, ['Order', 'Invoice', 'Session', 'UserRecord', 'Payload']);
  return `export async function ${fn}(input: readonly ${T}[], opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Map<string, ${T}>> {
  const out = new Map<string, ${T}>();
  for (const item of input) {
    if (item.${pick(r, ['status', 'kind', 'state'])} !== '${pick(r, WORDS.adj)}') continue;
    const res = await fetch(\`\${BASE_URL}/api/v${int(r, 1, 3)}/${pick(r, WORDS.noun)}s/\${encodeURIComponent(item.id)}\`, { signal: opts.signal });
    if (!res.ok) throw new Error(\`${fn} failed: \${res.status} \${res.statusText}\`);
    const body = (await res.json()) as Partial<${T}>;
    out.set(item.id, { ...item, ...body, updatedAt: Date.now() });
  }
  return out;
}

`;
}

function goCode(r: Rand): string {
  const fn = camel(r);
  const Fn = fn[0]!.toUpperCase() + fn.slice(1);
  return `// ${Fn} ${pick(r, PROSE).slice(0, 70).toLowerCase()}
func (s *Server) ${Fn}(ctx context.Context, req *pb.${Fn}Request) (*pb.${Fn}Response, error) {
	if req.GetId() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "id is required")
	}
	ctx, cancel := context.WithTimeout(ctx, ${int(r, 1, 30)}*time.Second)
	defer cancel()
	rows, err := s.db.QueryContext(ctx, "SELECT id, name, created_at FROM ${pick(r, WORDS.noun)}s WHERE owner_id = $1 LIMIT $2", req.GetId(), ${int(r, 10, 1000)})
	if err != nil {
		return nil, fmt.Errorf("${fn}: query: %w", err)
	}
	defer rows.Close()
	var out []*pb.Item
	for rows.Next() {
		var it pb.Item
		if err := rows.Scan(&it.Id, &it.Name, &it.CreatedAt); err != nil {
			return nil, err
		}
		out = append(out, &it)
	}
	return &pb.${Fn}Response{Items: out}, rows.Err()
}

`;
}

function sqlCode(r: Rand): string {
  const t = pick(r, WORDS.noun) + 's';
  const u = pick(r, WORDS.noun) + 's';
  return `-- ${pick(r, PROSE).slice(0, 60)}
SELECT ${t.slice(0, 1)}.id,
       ${t.slice(0, 1)}.${pick(r, ['name', 'title', 'status'])},
       COUNT(${u.slice(0, 1)}2.id) AS ${u}_count,
       SUM(${u.slice(0, 1)}2.amount_cents) / 100.0 AS total_amount,
       MAX(${u.slice(0, 1)}2.created_at) AS last_seen
FROM ${t} AS ${t.slice(0, 1)}
LEFT JOIN ${u} AS ${u.slice(0, 1)}2 ON ${u.slice(0, 1)}2.${t.slice(0, -1)}_id = ${t.slice(0, 1)}.id
WHERE ${t.slice(0, 1)}.created_at >= DATE '2024-0${int(r, 1, 9)}-${int(r, 10, 28)}'
  AND ${t.slice(0, 1)}.region IN ('${pick(r, WORDS.city)}', '${pick(r, WORDS.city)}')
GROUP BY ${t.slice(0, 1)}.id, ${t.slice(0, 1)}.name
HAVING COUNT(${u.slice(0, 1)}2.id) > ${int(r, 1, 50)}
ORDER BY total_amount DESC
LIMIT ${int(r, 10, 100)};

`;
}

function shellCode(r: Rand): string {
  const svc = `${pick(r, WORDS.noun)}-${pick(r, ['api', 'worker', 'gateway', 'cron'])}`;
  return `#!/usr/bin/env bash
set -euo pipefail
# deploy ${svc} to the ${pick(r, ['staging', 'production', 'canary'])} cluster
NAMESPACE="\${NAMESPACE:-${pick(r, ['default', 'apps', 'platform'])}}"
IMAGE="registry.example.com/${svc}:$(git rev-parse --short HEAD)"
docker build -t "$IMAGE" -f docker/Dockerfile . && docker push "$IMAGE"
kubectl -n "$NAMESPACE" set image deployment/${svc} ${svc}="$IMAGE"
if ! kubectl -n "$NAMESPACE" rollout status deployment/${svc} --timeout=${int(r, 60, 600)}s; then
  echo "rollout of ${svc} failed, rolling back" >&2
  kubectl -n "$NAMESPACE" rollout undo deployment/${svc}
  exit 1
fi
find /var/log/${svc} -name '*.log' -mtime +${int(r, 3, 30)} -print0 | xargs -0 -r gzip -9
for f in "\${CONFIG_DIR}"/*.yaml; do grep -q 'enabled: true' "$f" && echo "active: $(basename "$f" .yaml)"; done

`;
}

function jsonRecord(r: Rand): Json {
  const first = pick(r, WORDS.first);
  const last = pick(r, WORDS.last);
  return {
    id: int(r, 10_000, 999_999),
    uuid: uuid(r),
    name: `${first} ${last}`,
    email: `${first.toLowerCase()}.${last.toLowerCase().replace(/[^a-z]/g, '')}@example.com`,
    created_at: iso(r, Date.UTC(2024, 0, 1)),
    active: r() > 0.3,
    score: Math.round(r() * 10_000) / 1000,
    tags: [pick(r, WORDS.adj), pick(r, WORDS.noun)],
    address: {
      city: pick(r, WORDS.city),
      zip: String(int(r, 10_000, 99_999)),
      street: `${int(r, 1, 300)} ${pick(r, ['Main St', 'Oak Ave', 'Hauptstraße', 'Rue de la Paix'])}`,
    },
    orders: Array.from({ length: int(r, 0, 3) }, () => ({
      sku: `SKU-${hex(r, 6).toUpperCase()}`,
      qty: int(r, 1, 9),
      price: Math.round(r() * 20_000) / 100,
    })),
  };
}

function yamlDoc(r: Rand): string {
  const name = `${pick(r, WORDS.noun)}-${pick(r, ['api', 'worker', 'web'])}`;
  return `---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ${name}
  namespace: ${pick(r, ['default', 'apps', 'platform'])}
  labels:
    app.kubernetes.io/name: ${name}
    app.kubernetes.io/version: "${int(r, 1, 9)}.${int(r, 0, 20)}.${int(r, 0, 99)}"
spec:
  replicas: ${int(r, 1, 12)}
  selector:
    matchLabels:
      app: ${name}
  template:
    spec:
      containers:
        - name: ${name}
          image: registry.example.com/${name}:${hex(r, 7)}
          ports:
            - containerPort: ${int(r, 3000, 9000)}
          env:
            - name: LOG_LEVEL
              value: ${pick(r, ['info', 'debug', 'warn'])}
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef: { name: ${name}-db, key: url }
          resources:
            requests: { cpu: ${int(r, 100, 900)}m, memory: ${int(r, 128, 2048)}Mi }
            limits: { cpu: "${int(r, 1, 4)}", memory: ${int(r, 1, 8)}Gi }
          readinessProbe:
            httpGet: { path: /readyz, port: http }
            periodSeconds: ${int(r, 5, 30)}
`;
}

function markdownTable(r: Rand): string {
  const rows = Array.from({ length: 12 }, () => {
    const q = Array.from({ length: 4 }, () => (r() * 1000).toFixed(1));
    const delta = ((r() - 0.4) * 30).toFixed(1);
    return `| ${pick(r, WORDS.city)} | ${pick(r, WORDS.first)} ${pick(r, WORDS.last)} | ${q.join(' | ')} | ${delta}% | ${pick(r, ['on track', 'at risk', 'ahead', 'behind'])} |`;
  });
  return `### ${pick(r, ['Regional sales', 'Quarterly revenue', 'Team targets'])} (${int(r, 2019, 2025)})\n\n| Region | Owner | Q1 | Q2 | Q3 | Q4 | YoY | Status |\n|--------|-------|---:|---:|---:|---:|----:|--------|\n${rows.join('\n')}\n\n`;
}

function csvRows(r: Rand): string {
  let s = '';
  for (let i = 0; i < 20; i++) {
    s += `${iso(r, Date.UTC(2024, 4, 1))},sensor-${int(r, 1, 64)},${(15 + r() * 20).toFixed(2)},${(20 + r() * 60).toFixed(1)},${(990 + r() * 40).toFixed(1)},${int(r, 0, 4095)},${r() > 0.95 ? 'ALARM' : 'OK'}\n`;
  }
  return s;
}

function logLines(r: Rand): string {
  let s = '';
  for (let i = 0; i < 10; i++) {
    const lvl = pick(r, ['INFO', 'INFO', 'INFO', 'WARN', 'ERROR', 'DEBUG']);
    const method = pick(r, ['GET', 'POST', 'PUT', 'DELETE']);
    s += `${iso(r, Date.UTC(2024, 5, 1))} ${lvl.padEnd(5)} [${pick(r, ['api', 'worker', 'auth', 'billing'])}-${int(r, 1, 9)}] request_id=${uuid(r)} trace_id=${hex(r, 32)} ${method} /api/v${int(r, 1, 2)}/${pick(r, WORDS.noun)}s/${int(r, 1, 99_999)} status=${pick(r, [200, 200, 201, 204, 400, 404, 500, 503])} duration_ms=${(r() * 900).toFixed(1)} user=${uuid(r)}\n`;
    if (lvl === 'ERROR')
      s += `    at ${camel(r)} (/srv/app/dist/${pick(r, WORDS.noun)}/${camel(r)}.js:${int(r, 1, 900)}:${int(r, 1, 80)})\n    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)\n`;
  }
  return s;
}

function urlsAndPaths(r: Rand): string {
  let s = '';
  for (let i = 0; i < 8; i++) {
    s += `https://${pick(r, ['api', 'www', 'cdn', 'docs'])}.${pick(r, ['example.com', 'github.com', 'storage.googleapis.com', 'amazonaws.com'])}/${pick(r, WORDS.noun)}s/${uuid(r)}/${pick(r, WORDS.verb)}?utm_source=${pick(r, ['newsletter', 'twitter'])}&page=${int(r, 1, 40)}&sort=${pick(r, ['asc', 'desc'])}&sig=${hex(r, 24)}\n`;
    s += `/home/${pick(r, WORDS.first).toLowerCase()}/projects/${pick(r, WORDS.noun)}-service/src/${pick(r, WORDS.noun)}/${camel(r)}.${pick(r, ['ts', 'py', 'go', 'rs'])}:${int(r, 1, 2000)}:${int(r, 1, 80)}\n`;
    s += `C:\\Users\\${pick(r, WORDS.first)}\\AppData\\Local\\${pick(r, ['Temp', 'Programs', 'Packages'])}\\${camel(r)}\\${hex(r, 8)}.dll\n`;
  }
  return s;
}

function base64Blob(r: Rand): string {
  const bytes = Buffer.from(Array.from({ length: 57 * 8 }, () => Math.floor(r() * 256)));
  return (bytes.toString('base64').match(/.{1,76}/g) ?? []).join('\n') + '\n';
}

function hexDump(r: Rand, offset: { n: number }): string {
  let s = '';
  for (let i = 0; i < 8; i++) {
    const bytes = Array.from({ length: 16 }, () =>
      r() < 0.3 ? 0 : r() < 0.5 ? int(r, 0x20, 0x7e) : int(r, 0, 255),
    );
    const groups: string[] = [];
    for (let j = 0; j < 16; j += 2)
      groups.push(bytes[j]!.toString(16).padStart(2, '0') + bytes[j + 1]!.toString(16).padStart(2, '0'));
    const ascii = bytes.map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    s += `${offset.n.toString(16).padStart(8, '0')}: ${groups.join(' ')}  ${ascii}\n`;
    offset.n += 16;
  }
  return s;
}

const EMOJI_LINES = [
  'omg yes 😂😂😂 that is exactly what happened',
  'see you at 8? 🍕🎉',
  'happy birthday!!! 🎂🥳🎈🎁 love you 💕',
  "can't wait for the trip ✈️🏖️🌴☀️",
  'lol 🤣🤣 no way',
  'good morning ☕️🌞 how did you sleep?',
  'the whole family is coming 👨‍👩‍👧‍👦👵🏽👴🏻',
  'go team 🇧🇷🇧🇷⚽️🔥🔥🔥',
  'thanks so much 🙏🏾🙏🏾 you are the best',
  'ugh monday again 😩💼',
  'look at this cat 🐱😻😻',
  'ok 👍',
  'congrats on the new job 🎊👏🏼👏🏼🍾',
  'I am so tired 😴😴 going to bed 🛌 night 🌙✨',
  '❤️🧡💛💚💙💜',
];

const CHINESE = [
  '今天天气很好，我们决定去公园散步，顺便买一些新鲜的水果。',
  '这个项目的主要目标是提高系统的稳定性和响应速度，同时降低运营成本。',
  '如果您对订单有任何疑问，请随时联系我们的客服团队，我们将尽快为您解答。',
  '他在大学里学习计算机科学，毕业后在一家互联网公司担任软件工程师。',
  '根据最新的统计数据，今年第一季度的销售额比去年同期增长了百分之十二。',
  '会议将于下周三上午十点在三楼的大会议室举行，请各部门负责人准时参加。',
  '这本书讲述了一个普通家庭在时代变迁中的故事，感动了无数读者。',
  '为了保护环境，我们应该减少使用一次性塑料制品，尽量选择可重复使用的物品。',
];
const JAPANESE = [
  '昨日は一日中雨が降っていたので、家で本を読んだり映画を見たりして過ごしました。',
  'このサービスをご利用いただくには、まずアカウントを作成してログインしてください。',
  '来週の会議では、新しいプロジェクトの進捗状況について報告する予定です。',
  '東京から大阪まで新幹線で約二時間半かかりますが、とても快適な旅でした。',
  'ご不明な点がございましたら、お気軽にお問い合わせください。',
  '彼女は毎朝六時に起きて、近くの公園でジョギングをしています。',
];
const KOREAN = [
  '오늘은 날씨가 정말 좋아서 친구들과 함께 한강 공원에 산책을 갔습니다.',
  '이 제품에 대해 궁금한 점이 있으시면 언제든지 고객센터로 연락해 주세요.',
  '다음 주 회의에서는 새로운 프로젝트의 진행 상황을 보고할 예정입니다.',
  '그는 대학교에서 컴퓨터 공학을 전공하고 지금은 소프트웨어 개발자로 일하고 있습니다.',
  '서울에서 부산까지 기차로 약 세 시간 정도 걸립니다.',
  '건강을 위해 매일 아침 운동을 하고 채소를 많이 먹으려고 노력하고 있어요.',
];
const ARABIC = [
  'ذهبنا أمس إلى السوق لشراء بعض الخضروات والفواكه الطازجة لعشاء العائلة.',
  'يهدف هذا المشروع إلى تحسين جودة التعليم في المدارس الحكومية في المناطق الريفية.',
  'إذا كان لديك أي سؤال حول طلبك، يرجى التواصل مع فريق خدمة العملاء في أي وقت.',
  'سيعقد الاجتماع القادم يوم الأربعاء في الساعة العاشرة صباحاً في قاعة المؤتمرات.',
  'تعتبر القراءة من أهم الوسائل لتوسيع المعرفة وتطوير مهارات التفكير النقدي.',
  'ارتفعت أسعار النفط في الأسواق العالمية بنسبة خمسة في المئة خلال الأسبوع الماضي.',
];
const HINDI = [
  'आज मौसम बहुत अच्छा है, इसलिए हमने पार्क में टहलने जाने का फैसला किया।',
  'इस परियोजना का मुख्य उद्देश्य ग्रामीण क्षेत्रों में शिक्षा की गुणवत्ता में सुधार करना है।',
  'यदि आपके ऑर्डर के बारे में कोई प्रश्न है, तो कृपया हमारी ग्राहक सेवा टीम से संपर्क करें।',
  'अगली बैठक बुधवार को सुबह दस बजे सम्मेलन कक्ष में आयोजित की जाएगी।',
  'वह दिल्ली विश्वविद्यालय में कंप्यूटर विज्ञान की पढ़ाई कर रहा है।',
  'स्वस्थ रहने के लिए रोज़ व्यायाम करना और संतुलित आहार लेना ज़रूरी है।',
];
const RUSSIAN = [
  'Вчера мы ходили в театр на новую постановку, и она нам очень понравилась.',
  'Основная цель этого проекта — повысить надёжность системы и сократить расходы на её поддержку.',
  'Если у вас возникли вопросы по заказу, пожалуйста, свяжитесь с нашей службой поддержки.',
  'Следующее совещание состоится в среду в десять часов утра в большом конференц-зале.',
  'По данным статистики, продажи в первом квартале выросли на двенадцать процентов.',
  'Он всегда говорил, что хорошая книга — лучший подарок для любого человека.',
];

const CONVERSATION = [
  'hey, are you around?',
  'yes, what is up',
  'can you check the deploy logs?',
  'sure, one sec',
  'ok',
  'looks like the migration failed on step 3',
  'ugh, again?',
  'yeah, same lock timeout as last week',
  'can we retry it?',
  'retrying now',
  'thanks!',
  'done, it passed this time 👍',
  'great',
  'lunch at 12?',
  'sounds good',
  'where?',
  'the thai place',
  'perfect',
  'btw did you see the email from finance?',
  'not yet',
  'they need the report by friday',
  'ok I will send it tomorrow',
  'cool',
  'np',
];

// ---------------------------------------------------------------------------------------------------------
// Tools: 50 functions, and what OpenAI counts for them (its TypeScript-like rendering, not the JSON).

interface ParamSchema {
  type: string;
  description?: string;
  enum?: string[];
  items?: { type: string };
}
interface ToolDef {
  type: 'function';
  function: {
    name: string;
    description: string;
    parameters: { type: 'object'; properties: Record<string, ParamSchema>; required: string[] };
  };
}

function makeTools(r: Rand, n: number): ToolDef[] {
  return Array.from({ length: n }, (_, i) => {
    const props: Record<string, ParamSchema> = {};
    const count = int(r, 2, 6);
    for (let j = 0; j < count; j++) {
      const key = `${pick(r, WORDS.adj)}_${pick(r, WORDS.noun)}${j}`;
      const kind = pick(r, ['string', 'integer', 'boolean', 'enum', 'array']);
      props[key] =
        kind === 'enum'
          ? {
              type: 'string',
              description: `How to ${pick(r, WORDS.verb)} the ${pick(r, WORDS.noun)}.`,
              enum: ['asc', 'desc', pick(r, WORDS.adj)],
            }
          : kind === 'array'
            ? {
                type: 'array',
                description: `The ${pick(r, WORDS.noun)} ids to ${pick(r, WORDS.verb)}.`,
                items: { type: 'string' },
              }
            : { type: kind, description: pick(r, PROSE).slice(0, int(r, 30, 90)) };
    }
    return {
      type: 'function',
      function: {
        name: `${snake(r)}_${i}`,
        description: `${pick(r, PROSE).slice(0, int(r, 40, 140))}`,
        parameters: { type: 'object', properties: props, required: Object.keys(props).slice(0, 2) },
      },
    };
  });
}

/** OpenAI's rendering of function tools into the prompt (as reverse-engineered by openai-chat-tokens). */
function renderToolsAsOpenAI(tools: readonly ToolDef[]): string {
  const lines = ['# Tools', '', '## functions', '', 'namespace functions {', ''];
  for (const t of tools) {
    const f = t.function;
    lines.push(`// ${f.description}`);
    lines.push(`type ${f.name} = (_: {`);
    for (const [k, p] of Object.entries(f.parameters.properties)) {
      if (p.description) lines.push(`// ${p.description}`);
      const opt = f.parameters.required.includes(k) ? '' : '?';
      const ty = p.enum
        ? p.enum.map((e) => JSON.stringify(e)).join(' | ')
        : p.type === 'array'
          ? `${p.items?.type ?? 'any'}[]`
          : p.type === 'integer'
            ? 'number'
            : p.type;
      lines.push(`${k}${opt}: ${ty},`);
    }
    lines.push('}) => any;', '');
  }
  lines.push('} // namespace functions');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// Cases: a body per kind, sized by the exact count.

interface Case {
  readonly kind: string;
  readonly model: string;
  readonly window: number;
  readonly body: Json;
  /** What the provider counts (o200k over the text; OpenAI's tool rendering for tools). */
  readonly exact: number;
  /** What the gateway counts (APPROXIMATE). */
  readonly estimate: number;
  /** For tools: o200k over the tools' JSON, beside the rendering. */
  readonly note?: string;
}

const FILL = 0.9;

/** Text of `gen` pieces (joined) whose body (via `wrap`) counts at most `target` exact tokens, as close as possible. */
function fitText(gen: (i: number) => string, wrap: (text: string) => Json, target: number): Json {
  const pieces: string[] = [];
  const countAt = (k: number): number =>
    estimatePromptTokens(wrap(pieces.slice(0, k).join('')) as never, EXACT);
  // Grow until past the target, then bisect on the number of pieces, then trim the last piece by characters.
  while (pieces.length === 0 || countAt(pieces.length) <= target) {
    const add = Math.max(1, pieces.length);
    for (let j = 0; j < add; j++) pieces.push(gen(pieces.length));
  }
  let lo = 0;
  let hi = pieces.length;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (countAt(mid) <= target) lo = mid;
    else hi = mid;
  }
  const head = pieces.slice(0, lo).join('');
  const next = pieces[lo] ?? '';
  // Characters of the next piece (whole code points).
  const cps = [...next];
  let a = 0;
  let b = cps.length;
  while (b - a > 1) {
    const mid = (a + b) >> 1;
    if (estimatePromptTokens(wrap(head + cps.slice(0, mid).join('')) as never, EXACT) <= target) a = mid;
    else b = mid;
  }
  return wrap(head + cps.slice(0, a).join(''));
}

const SYSTEM = 'You are a helpful assistant. Answer concisely and cite the parts of the input you rely on.';
const userAsk =
  (ask: string) =>
  (text: string): Json => ({
    model: '',
    messages: [
      { role: 'system', content: SYSTEM },
      { role: 'user', content: `${ask}\n\n${text}` },
    ],
  });
const toolResult = (text: string): Json => ({
  model: '',
  messages: [
    { role: 'system', content: SYSTEM },
    { role: 'user', content: 'Find the customers in Berlin with open orders.' },
    {
      role: 'assistant',
      content: null,
      tool_calls: [
        {
          id: 'call_1',
          type: 'function',
          function: { name: 'search_customers', arguments: '{"city":"Berlin","limit":200}' },
        },
      ],
    },
    { role: 'tool', tool_call_id: 'call_1', content: text },
  ],
});

interface Kind {
  readonly name: string;
  readonly seed: number;
  readonly gen: (r: Rand) => (i: number) => string;
  readonly wrap: (text: string) => Json;
}

const perLine = (lines: readonly string[]) => (r: Rand) => () => pick(r, lines) + '\n';
const sentences =
  (lines: readonly string[], sep = '') =>
  (r: Rand) =>
  (i: number) =>
    pick(r, lines) + (i % 5 === 4 ? '\n\n' : sep);

const KINDS: readonly Kind[] = [
  { name: 'English prose', seed: 1, gen: (r) => () => prose(r), wrap: userAsk('Summarize this document.') },
  {
    name: 'Python code',
    seed: 2,
    gen: (r) => () => pythonCode(r),
    wrap: userAsk('Review this Python class.'),
  },
  {
    name: 'TypeScript code',
    seed: 3,
    gen: (r) => () => typescriptCode(r),
    wrap: userAsk('Find the bug in this module.'),
  },
  { name: 'Go code', seed: 4, gen: (r) => () => goCode(r), wrap: userAsk('Add tracing to these handlers.') },
  {
    name: 'SQL',
    seed: 5,
    gen: (r) => () => sqlCode(r),
    wrap: userAsk('Which of these queries need an index?'),
  },
  {
    name: 'shell scripts',
    seed: 6,
    gen: (r) => () => shellCode(r),
    wrap: userAsk('Make these scripts POSIX sh.'),
  },
  {
    name: 'minified JSON tool result',
    seed: 7,
    gen: (r) => (i) => (i === 0 ? '[' : ',') + JSON.stringify(jsonRecord(r)),
    wrap: toolResult,
  },
  {
    name: 'pretty JSON tool result',
    seed: 8,
    gen: (r) => (i) =>
      (i === 0 ? '[\n' : ',\n') + JSON.stringify(jsonRecord(r), null, 2).replace(/^/gm, '  '),
    wrap: toolResult,
  },
  {
    name: 'YAML manifests',
    seed: 9,
    gen: (r) => () => yamlDoc(r),
    wrap: userAsk('Check these manifests for mistakes.'),
  },
  {
    name: 'markdown tables',
    seed: 10,
    gen: (r) => () => markdownTable(r),
    wrap: userAsk('Which regions are behind?'),
  },
  {
    name: 'CSV numeric data',
    seed: 11,
    gen: (r) => (i) =>
      (i === 0 ? 'timestamp,sensor,temp_c,humidity,pressure_hpa,raw,state\n' : '') + csvRows(r),
    wrap: userAsk('Find anomalies in this sensor data.'),
  },
  {
    name: 'logs with timestamps and UUIDs',
    seed: 12,
    gen: (r) => () => logLines(r),
    wrap: userAsk('Why are requests failing?'),
  },
  {
    name: 'URLs and file paths',
    seed: 13,
    gen: (r) => () => urlsAndPaths(r),
    wrap: userAsk('Group these by host.'),
  },
  {
    name: 'base64 blob',
    seed: 14,
    gen: (r) => () => base64Blob(r),
    wrap: userAsk('Decode this attachment and tell me what file type it is.'),
  },
  {
    name: 'hex dump',
    seed: 15,
    gen: (r) => {
      const offset = { n: 0 };
      return () => hexDump(r, offset);
    },
    wrap: userAsk('What is in this firmware image?'),
  },
  {
    name: 'emoji-heavy chat',
    seed: 16,
    gen: perLine(EMOJI_LINES),
    wrap: userAsk('Summarize this group chat.'),
  },
  { name: 'Chinese', seed: 17, gen: sentences(CHINESE), wrap: userAsk('请总结以下内容。') },
  { name: 'Japanese', seed: 18, gen: sentences(JAPANESE), wrap: userAsk('次の文章を要約してください。') },
  { name: 'Korean', seed: 19, gen: sentences(KOREAN, ' '), wrap: userAsk('다음 내용을 요약해 주세요.') },
  { name: 'Arabic', seed: 20, gen: sentences(ARABIC, ' '), wrap: userAsk('لخص النص التالي.') },
  { name: 'Hindi', seed: 21, gen: sentences(HINDI, ' '), wrap: userAsk('निम्नलिखित का सारांश दें।') },
  { name: 'Russian', seed: 22, gen: sentences(RUSSIAN, ' '), wrap: userAsk('Кратко перескажи текст.') },
  {
    name: 'mixed-language',
    seed: 23,
    gen: (r) => () => {
      const lang = pick(r, [PROSE, CHINESE, RUSSIAN, ARABIC, JAPANESE, HINDI, EMOJI_LINES]);
      return pick(r, lang) + (r() < 0.3 ? '\n' : ' ');
    },
    wrap: userAsk('Translate everything into English.'),
  },
  {
    name: 'separator runs (==== ---- ****)',
    seed: 24,
    gen: (r) => () => {
      const w = int(r, 40, 100);
      const c = pick(r, ['=', '-', '*', '#', '~', '_']);
      return `${c.repeat(w)}\n${pick(r, ['BUILD', 'TEST', 'DEPLOY', 'SUMMARY'])} ${pick(r, WORDS.noun)} ${int(r, 1, 999)}\n${c.repeat(w)}\n${pick(r, PROSE)}\n+${'-'.repeat(int(r, 8, 20))}+${'-'.repeat(int(r, 8, 20))}+\n`;
    },
    wrap: userAsk('Which step failed?'),
  },
  {
    name: 'deeply indented code (spaces and tabs)',
    seed: 25,
    gen: (r) => () => {
      const tab = r() < 0.5 ? '\t' : '    ';
      let s = '';
      for (let d = 0; d < 8; d++)
        s += `${tab.repeat(d)}${pick(r, ['if', 'for', 'while'])} (${camel(r)}(${pick(r, WORDS.noun)})) {\n`;
      for (let d = 7; d >= 0; d--) s += `${tab.repeat(d + 1)}${camel(r)}();\n${tab.repeat(d)}}\n`;
      return s;
    },
    wrap: userAsk('Flatten this nesting.'),
  },
];

function buildTextCase(k: Kind, window: number, fill = FILL, maxTokens?: number): Case {
  const r = mulberry32(k.seed * 1000 + window);
  const gen = k.gen(r);
  const model = `m${k.seed}-${window}${maxTokens === undefined ? '' : `-out${maxTokens}`}`;
  const body = fitText(gen, k.wrap, Math.floor(window * fill));
  const extra = maxTokens === undefined ? {} : { max_tokens: maxTokens };
  return finish(k.name, model, window, { ...body, model: `r-${model}`, ...extra });
}

function finish(
  kind: string,
  model: string,
  window: number,
  body: Json,
  exactOverride?: number,
  note?: string,
): Case {
  const exact = exactOverride ?? estimatePromptTokens(body as never, EXACT);
  return {
    kind,
    model,
    window,
    body,
    exact,
    estimate: estimatePromptTokens(body as never, APPROXIMATE),
    note,
  };
}

/** 500 short turns (user and assistant in turn), ~90 % of the window. */
function conversationCase(): Case {
  const r = mulberry32(500);
  const messages: Json[] = [{ role: 'system', content: SYSTEM }];
  for (let i = 0; i < 500; i++)
    messages.push({ role: i % 2 === 0 ? 'user' : 'assistant', content: pick(r, CONVERSATION) });
  const body: Json = { model: '', messages };
  const exact = estimatePromptTokens(body as never, EXACT);
  const window = Math.ceil(exact / FILL);
  const model = 'm500-turns';
  return finish('500-message conversation of short turns', model, window, { ...body, model: `r-${model}` });
}

/** 50 function tools and a short question: the window sized by OpenAI's rendering of the tools. */
function toolsCase(): Case {
  const r = mulberry32(50);
  const tools = makeTools(r, 50);
  const body: Json = {
    model: '',
    messages: [
      { role: 'system', content: SYSTEM },
      {
        role: 'user',
        content: 'Book a table for four in Berlin tomorrow at 8pm and send me the confirmation.',
      },
    ],
    tools,
  };
  const messagesExact = estimatePromptTokens({ messages: body.messages } as never, EXACT);
  const rendered = exactText(renderToolsAsOpenAI(tools));
  const asJson = exactText(JSON.stringify(tools));
  const exact = messagesExact + rendered;
  const window = Math.ceil(exact / FILL);
  const model = 'm-tools50';
  return finish(
    'tools: 50 functions',
    model,
    window,
    { ...body, model: `r-${model}` },
    exact,
    `o200k of the tools' JSON: ${asJson + messagesExact}`,
  );
}

/** Text with four 1024×1024 photos (high detail, 765 tokens each by OpenAI's formula) and two low-detail ones. */
function imagesCase(window: number): Case {
  const images: Json[] = [
    ...[1, 2, 3, 4].map((i) => ({
      type: 'image_url',
      image_url: { url: `https://example.com/photos/1024x1024-${i}.jpg`, detail: 'high' },
    })),
    ...[5, 6].map((i) => ({
      type: 'image_url',
      image_url: { url: `https://example.com/photos/thumb-${i}.jpg`, detail: 'low' },
    })),
  ];
  const imageTokens = 4 * 765 + 2 * 85;
  const r = mulberry32(77 + window);
  const wrap = (text: string): Json => ({
    model: '',
    messages: [
      { role: 'system', content: SYSTEM },
      {
        role: 'user',
        content: [{ type: 'text', text: `Compare these photos with the notes below.\n\n${text}` }, ...images],
      },
    ],
  });
  const body = fitText(() => prose(r), wrap, Math.floor(window * FILL));
  const model = `m-images-${window}`;
  const c = finish('images in parts (4 high 1024², 2 low) + prose', model, window, {
    ...body,
    model: `r-${model}`,
  });
  return { ...c, note: `images ${imageTokens} of it` };
}

const WINDOWS = [2000, 8000] as const;
const CASES: Case[] = [
  ...KINDS.flatMap((k) => WINDOWS.map((w) => buildTextCase(k, w))),
  conversationCase(),
  toolsCase(),
  ...[4000, 8000].map(imagesCase),
];

/** The commonest kinds with a usual request shape: prompt at 85 % of the window and max_tokens 10 % (95 % in all). */
const COMMON = ['English prose', 'Python code', 'TypeScript code', 'minified JSON tool result'];
const WITH_OUTPUT: Case[] = KINDS.filter((k) => COMMON.includes(k.name)).map((k) =>
  buildTextCase(k, 8000, 0.85, 800),
);

const kindCase = (kind: string, window: number): Case => {
  const c = CASES.find((x) => x.kind === kind && x.window === window);
  if (c === undefined) throw new Error(`no case ${kind} @${window}`);
  return c;
};

const ratio = (c: Case): string => (c.estimate / c.exact).toFixed(3);

// ---------------------------------------------------------------------------------------------------------
// One gateway, one upstream: a model (and a route) per case, each with its window.

const track = closeAfterAll();
let gw: TestGateway;
let upstream: { url: string; received: Received[] };
const ALL = [...CASES, ...WITH_OUTPUT];
const byModel = new Map(ALL.map((c) => [c.model, c]));

function answer(r: Received, res: ServerResponse): void {
  const c = byModel.get(String(r.body.model));
  const prompt = c?.exact ?? 1;
  const usage = { prompt_tokens: prompt, completion_tokens: 1, total_tokens: prompt + 1 };
  const model = String(r.body.model);
  if (r.body.stream === true) {
    const withUsage =
      (r.body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
    const frame = (x: Json): string =>
      `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model, ...x })}\n\n`;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end(
      frame({ choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }) +
        frame({ choices: [{ index: 0, delta: { content: 'ok' }, finish_reason: null }] }) +
        frame({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }) +
        (withUsage ? frame({ choices: [], usage }) : '') +
        'data: [DONE]\n\n',
    );
    return;
  }
  sendJson(res, 200, {
    id: 'chatcmpl-fit',
    object: 'chat.completion',
    created: 1,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
    usage,
  });
}

beforeAll(async () => {
  upstream = track(await startMock(answer));
  gw = track(
    await startGateway({
      server: { host: '127.0.0.1', port: 0 },
      providers: [
        {
          name: 'p',
          kind: 'openai',
          base_url: `${upstream.url}/v1`,
          models: ALL.map((c) => ({
            name: c.model,
            context_window: c.window,
            capabilities: ['tools', 'json', 'vision', 'stream'],
          })),
        },
      ],
      routes: Object.fromEntries(
        ALL.map((c) => [`r-${c.model}`, { strategy: 'priority', targets: [`p/${c.model}`] }]),
      ),
    }),
  );
}, 60_000);

afterAll(() => {
  const rows = ALL.map((c) => {
    const out = typeof c.body.max_tokens === 'number' ? c.body.max_tokens : 0;
    const sent = c.estimate + out <= c.window;
    // The largest share of the window (by the exact count, no max_tokens) this kind may fill and still be sent.
    const maxFill = Math.min(1, c.exact / c.estimate);
    return `| ${c.kind} | ${c.window} | ${c.exact}${out ? ` +${out} out` : ''} | ${c.estimate} | ${ratio(c)} | ${(maxFill * 100).toFixed(0)} % | ${sent ? 'sent' : 'REFUSED'} |${c.note ? ` ${c.note}` : ''}`;
  });
  console.log(
    [
      '| kind | window | exact | estimate | est/exact | refused above | at 90 % |',
      '|---|---:|---:|---:|---:|---:|---|',
      ...rows,
    ].join('\n'),
  );
});

async function expectSent(c: Case): Promise<void> {
  const before = upstream.received.length;
  const res = await postChat(gw, c.body);
  expect(
    { status: res.status, error: res.status === 200 ? undefined : res.text.slice(0, 300) },
    `${c.kind}: ${c.exact} exact tokens in a ${c.window}-token window`,
  ).toEqual({ status: 200, error: undefined });
  const got = upstream.received.slice(before).find((r) => r.body.model === c.model);
  expect(got, 'the upstream received the request').toBeDefined();
}

describe('an honest prompt at ~90 % of the window (by o200k) is sent, not refused as too long', () => {
  for (const c of CASES) {
    it(`${c.kind}, window ${c.window}: estimate/exact ${ratio(c)} (${c.estimate}/${c.exact}) is sent`, () =>
      expectSent(c));
  }
});

describe('the usual request shape: prompt at 85 % of the window plus max_tokens 10 % is sent', () => {
  for (const c of WITH_OUTPUT) {
    it(`${c.kind}, window ${c.window}: ${c.exact} exact + 800 max_tokens, estimate ${c.estimate} (${ratio(c)}) is sent`, () =>
      expectSent(c));
  }
});

describe('the request log line counts the prompt the upstream reported, not the estimate', () => {
  const logged = (id: string): Record<string, unknown> | undefined =>
    gw.logs.find((l) => l.msg === 'request' && l.reqId === id);

  for (const kind of ['base64 blob', 'English prose']) {
    it(`${kind} (estimate/exact ${ratio(kindCase(kind, 8000))}): JSON answer's usage.prompt_tokens is the log's promptTokens`, async () => {
      const c = kindCase(kind, 8000);
      const id = `fit-log-${kind.replace(/\W+/g, '-')}`;
      const res = await postChat(gw, c.body, { headers: { 'x-request-id': id } });
      expect(res.status).toBe(200);
      expect((res.json.usage as Json | undefined)?.prompt_tokens).toBe(c.exact);
      expect(logged(id)?.promptTokens).toBe(c.exact);
    });
  }

  it('a stream with include_usage: the log line has the upstream-reported prompt (base64, estimate 0.47x)', async () => {
    const c = kindCase('base64 blob', 8000);
    const id = 'fit-log-stream';
    const res = await postChat(
      gw,
      { ...c.body, stream: true, stream_options: { include_usage: true } },
      { headers: { 'x-request-id': id } },
    );
    expect(res.status).toBe(200);
    expect(res.text).toContain(`"prompt_tokens":${c.exact}`);
    expect(logged(id)?.promptTokens).toBe(c.exact);
  });
});

describe('the cost strategy with a prompt whose estimate is far off (real prices: gemini-2.5-flash vs gpt-4.1-mini)', () => {
  // A: input $0.30, output $2.50 per Mtok (gemini-2.5-flash); B: input $0.40, output $1.60 (gpt-4.1-mini). A is
  // cheaper for long prompts, B for long answers: which is cheaper depends on the prompt's size.
  const A = { input_per_mtok: 0.3, output_per_mtok: 2.5 };
  const B = { input_per_mtok: 0.4, output_per_mtok: 1.6 };
  const usd = (p: typeof A, prompt: number, out: number): number =>
    (prompt * p.input_per_mtok + out * p.output_per_mtok) / 1e6;

  const cases = [
    { c: toolsCaseRef(), maxTokens: 800 },
    { c: kindCase('base64 blob', 8000), maxTokens: 600 },
  ];
  for (const { c, maxTokens } of cases) {
    const a = usd(A, c.exact, maxTokens);
    const b = usd(B, c.exact, maxTokens);
    const cheaper = a < b ? 'A' : 'B';
    const dearer = cheaper === 'A' ? b / a : a / b;
    // A base64 blob is estimated ~2x low (a known limit: its letters are read as a word's); a cost pick at the
    // edge between two prices goes by the estimate. `it.fails` keeps it running: flip it if that is fixed.
    const test = c.kind === 'base64 blob' ? it.fails : it;
    test(`${c.kind} (estimate/exact ${ratio(c)}), max_tokens ${maxTokens}: picks ${cheaper}, cheaper by the real count (the other costs ${((dearer - 1) * 100).toFixed(1)} % more)`, async () => {
      const local = track(await startMock(answer));
      const g = track(
        await startGateway({
          server: { host: '127.0.0.1', port: 0 },
          routing: { tie_epsilon: 0 },
          providers: [
            {
              name: 'A',
              kind: 'openai',
              base_url: `${local.url}/v1`,
              models: [{ name: c.model, price: A, capabilities: ['tools', 'json', 'vision', 'stream'] }],
            },
            {
              name: 'B',
              kind: 'openai',
              base_url: `${local.url}/v1`,
              models: [{ name: c.model, price: B, capabilities: ['tools', 'json', 'vision', 'stream'] }],
            },
          ],
          routes: { cheap: { strategy: 'cost', targets: [`A/${c.model}`, `B/${c.model}`] } },
        }),
      );
      // The premise, by the exact count: the two differ by more than rounding.
      expect(dearer).toBeGreaterThan(1.03);
      const res = await postChat(g, { ...c.body, model: 'cheap', max_tokens: maxTokens });
      expect(res.status).toBe(200);
      expect(
        { provider: res.headers['x-router-provider'] },
        `A $${a.toFixed(6)} vs B $${b.toFixed(6)} by the exact count; ranked by the estimate ${c.estimate}`,
      ).toEqual({ provider: cheaper });
    });
  }
});

function toolsCaseRef(): Case {
  const c = CASES.find((x) => x.kind === 'tools: 50 functions');
  if (c === undefined) throw new Error('no tools case');
  return c;
}
