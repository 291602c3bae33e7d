// @ts-check
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';

const nodeBuiltins = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];

export default tseslint.config(
  { ignores: ['node_modules/**', '.ferry/**', '.cache/**', 'dist/**', 'bench-results/**', '**/*.mjs', '**/*.js'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      // Unused imports, variables and trailing parameters; `_name` marks one kept on purpose.
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          vars: 'all',
          args: 'after-used',
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          destructuredArrayIgnorePattern: '^_',
          caughtErrors: 'none',
          ignoreRestSiblings: false,
        },
      ],
    },
  },
  {
    // Workflow and policy code runs in Temporal's deterministic sandbox: no Node APIs, no
    // wall clock, no randomness of its own.
    files: ['src/workflows/**/*.ts', 'src/policy/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins.map((name) => ({ name, message: 'Node builtins are not allowed in workflow or policy code.' })),
          patterns: [
            { group: ['node:*'], message: 'Node builtins are not allowed in workflow or policy code.' },
            { group: ['**/activities/*', '**/workers/*', '**/dataplane/*', '**/guest/*', '**/hypervisor/*', '**/cli/*', '**/api/*'], allowTypeImports: true, message: 'Workflow and policy code may import only types from mechanism modules.' },
          ],
        },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'process', message: 'No process/env in workflow or policy code.' },
        { name: 'setImmediate', message: 'Use workflow sleep/condition.' },
        { name: 'require', message: 'No require in workflow or policy code.' },
        { name: 'Buffer', message: 'No Buffer in workflow or policy code.' },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Math', property: 'random', message: 'No Math.random in workflow or policy code: pass a seed.' },
        { object: 'performance', property: 'now', message: 'No wall clock in workflow or policy code.' },
      ],
    },
  },
  {
    // Policy functions take every input explicitly, the time included (nowMs).
    files: ['src/policy/**/*.ts'],
    rules: {
      'no-restricted-syntax': [
        'error',
        { selector: "MemberExpression[object.name='Date'][property.name='now']", message: 'Policy code takes nowMs as an input.' },
        { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: 'Policy code takes nowMs as an input.' },
      ],
    },
  },
);
