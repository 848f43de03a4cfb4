// Lint rules for the TypeScript (src/, test/, bench/, scripts/): typescript-eslint's recommended
// set. Formatting is prettier's job (.prettierrc.json), not eslint's.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'bench/dist/',
      'bench/.peers/',
      'scripts/gpu/dist/',
      'build/',
      'prebuilds/',
      'models/',
      'node_modules/',
      'docs/',
      '.gpu-bundle/',
      'coverage/',
      'train/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts', '**/*.mts'],
    rules: {
      // `_`-prefixed names are deliberately unused (callback signatures, destructuring).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  {
    // Tests poke at replies whose shape they are checking, and match ANSI colour escapes.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off', 'no-control-regex': 'off' },
  },
  {
    // CommonJS scripts run by node directly.
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: {
        require: 'readonly',
        module: 'writable',
        process: 'readonly',
        console: 'readonly',
        __dirname: 'readonly',
        Buffer: 'readonly',
      },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
