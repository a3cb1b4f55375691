/** Types of scripts/build-console.mjs (imported by the browser tests). */
export declare const JS_BUDGET_BYTES: number;
export declare function newestWebSource(): number;
export interface ConsoleBuild {
  outDir: string;
  files: Array<{ file: string; bytes: number; gzipBytes: number }>;
  jsGzipBytes: number;
}
export declare function buildConsole(opts?: { outDir?: string; minify?: boolean; log?: (line: string) => void }): Promise<ConsoleBuild>;
